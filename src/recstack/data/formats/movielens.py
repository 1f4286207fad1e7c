"""MovieLens as GroupLens ships it: ml-100k, ml-1m / ml-10m, ml-latest (and RecBole copies via atomic)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import numpy as np
import pyarrow as pa

from recstack.data.dataset import Dataset
from recstack.data.formats.atomic import load_atomic
from recstack.data.formats.cells import ROLES, DataFormatError, _column_to_numpy, _line_label
from recstack.data.formats.delimited import read_delimited
from recstack.data.formats.side import align_side_table
from recstack.data.interactions import Interactions
from recstack.errors import RecstackError

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)
# ml-1m users.dat stores occupations as codes 0..20 (README of the archive); names read better.
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)
_TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")
_YEAR = re.compile(r"(\d{4})\s*$")


def load_movielens(path: str | Path) -> Dataset:
    """Load a MovieLens directory as GroupLens ships it, detecting the variant by its files.

    ml-100k (u.data, u.item, u.user), ml-1m / ml-10m (ratings.dat, movies.dat, users.dat with "::"),
    ml-latest / ml-latest-small / ml-20m / ml-25m (ratings.csv, movies.csv), or RecBole atomic files
    (delegated to `load_atomic`). A directory holding exactly one such folder (an unzipped archive)
    works too. Items get title (year stripped), year (-1 unknown) and genres ("A|B"); users get the
    demographic columns where the variant has them.
    """
    root = _movielens_root(Path(path))
    if (root / "u.data").is_file():
        return _load_ml100k(root)
    if (root / "ratings.dat").is_file():
        return _load_ml1m(root)
    if (root / "ratings.csv").is_file():
        return _load_ml_latest(root)
    return load_atomic(root)


def _has_movielens_files(directory: Path) -> bool:
    return any((directory / f).is_file() for f in ("u.data", "ratings.dat", "ratings.csv")) or any(
        directory.glob("*.inter"))


def _movielens_root(path: Path) -> Path:
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise RecstackError(f"{path}: no such directory; give the folder that holds the MovieLens files")
    if _has_movielens_files(path):
        return path
    nested = [d for d in sorted(path.iterdir()) if d.is_dir() and _has_movielens_files(d)]
    if len(nested) == 1:
        return nested[0]
    raise RecstackError(
        f"{path} holds no MovieLens files: expected u.data (ml-100k), ratings.dat (ml-1m), ratings.csv "
        "(ml-latest) or RecBole *.inter files" + (f"; several candidate folders: {[d.name for d in nested]}"
                                                  if nested else ""))


def _name_from(root: Path, default: str) -> str:
    return root.name if root.name.lower().startswith("ml-") else default


def _headerless_ratings(path: Path, sep: str) -> Interactions:
    """ml-100k's u.data and ml-1m's ratings.dat: user, item, rating, timestamp, no header row."""
    ratings = read_delimited(path, sep, header=False, names=list(ROLES),
                             column_types={role: pa.float64() if role == "value" else pa.int64() for role in ROLES})
    return _checked_interactions(ratings, path, header=False)


def _side_file(path: Path, sep: str, columns: dict[str, pa.DataType]) -> pa.Table:
    """A GroupLens item or user file: `columns` in file order, latin-1, no header row, no quoting."""
    return read_delimited(path, sep, header=False, names=list(columns), column_types=columns,
                          encoding="latin-1", quoted=False)


def _load_ml100k(root: Path) -> Dataset:
    interactions = _headerless_ratings(root / "u.data", "\t")
    item_table, user_table = {}, {}
    if (root / "u.item").is_file():
        text = ("title", "release_date", "video_release_date", "imdb_url")
        items = _side_file(root / "u.item", "|", {"item": pa.int64(), **{c: pa.string() for c in text},
                                                  **{g: pa.int8() for g in ML100K_GENRES}})
        title, year = split_title_year(_column(items, "title"), _column(items, "release_date"))
        flags = np.stack([_column(items, g) for g in ML100K_GENRES], axis=1) > 0
        genres = _genre_strings(flags, ML100K_GENRES)
        item_table = align_side_table(interactions.items.ids, _column(items, "item"),
                                      {"title": title, "year": year, "genres": genres})
    if (root / "u.user").is_file():
        users = _side_file(root / "u.user", "|", {"user": pa.int64(), "age": pa.int64(), "gender": pa.string(),
                                                  "occupation": pa.string(), "zip_code": pa.string()})
        user_table = align_side_table(interactions.users.ids, _column(users, "user"),
                                      {c: _column(users, c) for c in users.column_names[1:]})
    provenance = {"name": _name_from(root, "ml-100k"), "format": "movielens-100k", "source": str(root)}
    return Dataset(interactions, item_table, user_table, provenance=provenance)


def _checked_interactions(ratings: pa.Table, path: Path, header: bool,
                          names: Mapping[str, str] | None = None) -> Interactions:
    """A MovieLens ratings table -> Interactions, refusing empty ids and non-finite cells by line."""
    names = names or {role: role for role in ROLES}
    line = _line_label(header)
    raw = {role: _column_to_numpy(ratings.column(column), role, column, str(path), line)
           for role, column in names.items() if column in ratings.column_names}
    return Interactions.from_ids(raw["user"], raw["item"], value=raw.get("value"), timestamp=raw.get("timestamp"))


def _genre_strings(flags: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    labels = np.asarray(names, dtype=object)
    return np.array(["|".join(labels[row]) for row in flags], dtype=object)


def _load_ml1m(root: Path) -> Dataset:
    interactions = _headerless_ratings(root / "ratings.dat", "::")
    item_table, user_table = {}, {}
    if (root / "movies.dat").is_file():
        movies = _side_file(root / "movies.dat", "::", {"item": pa.int64(), "title": pa.string(),
                                                        "genres": pa.string()})
        title, year = split_title_year(_column(movies, "title"))
        item_table = align_side_table(interactions.items.ids, _column(movies, "item"),
                                      {"title": title, "year": year, "genres": _column(movies, "genres")})
    if (root / "users.dat").is_file():
        users = _side_file(root / "users.dat", "::", {"user": pa.int64(), "gender": pa.string(), "age": pa.int64(),
                                                      "occupation": pa.int64(), "zip_code": pa.string()})
        codes = _column(users, "occupation")
        known = (codes >= 0) & (codes < len(ML1M_OCCUPATIONS))
        occupation = np.where(known, np.asarray(ML1M_OCCUPATIONS, dtype=object)[np.where(known, codes, 0)],
                              codes.astype(str).astype(object))
        user_table = align_side_table(interactions.users.ids, _column(users, "user"), {
            "age": _column(users, "age"), "gender": _column(users, "gender"), "occupation": occupation,
            "zip_code": _column(users, "zip_code")})
    provenance = {"name": _name_from(root, "ml-1m"), "format": "movielens-1m", "source": str(root)}
    return Dataset(interactions, item_table, user_table, provenance=provenance)


def _load_ml_latest(root: Path) -> Dataset:
    ratings = read_delimited(root / "ratings.csv", ",", header=True,
                             column_types={"userId": pa.int64(), "movieId": pa.int64(), "rating": pa.float64(),
                                           "timestamp": pa.int64()})
    for needed in ("userId", "movieId", "rating"):
        if needed not in ratings.column_names:
            raise DataFormatError(f"{root / 'ratings.csv'} has no column {needed!r}; columns present: "
                                  f"{ratings.column_names}")
    interactions = _checked_interactions(ratings, root / "ratings.csv", header=True, names={
        "user": "userId", "item": "movieId", "value": "rating", "timestamp": "timestamp"})
    item_table = {}
    if (root / "movies.csv").is_file():
        movies = read_delimited(root / "movies.csv", ",", header=True,
                                column_types={"movieId": pa.int64(), "title": pa.string(), "genres": pa.string()})
        title, year = split_title_year(_column(movies, "title"))
        genres = _column(movies, "genres")
        genres = np.where(genres == "(no genres listed)", "", genres).astype(object)
        item_table = align_side_table(interactions.items.ids, _column(movies, "movieId"),
                                      {"title": title, "year": year, "genres": genres})
    provenance = {"name": _name_from(root, "ml-latest"), "format": "movielens-latest", "source": str(root)}
    return Dataset(interactions, item_table, provenance=provenance)


def split_title_year(titles: np.ndarray, fallback_dates: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """"Toy Story (1995)" -> ("Toy Story", 1995); the year falls back to a date's trailing year, else -1."""
    clean = np.empty(len(titles), dtype=object)
    years = np.full(len(titles), -1, dtype=np.int64)
    for i, title in enumerate(titles):  # one pass over the catalogue, not over interactions
        title = str(title).strip()
        match = _TITLE_YEAR.match(title)
        if match:
            clean[i], years[i] = match.group(1), int(match.group(2))
            continue
        clean[i] = title
        if fallback_dates is not None:
            date = _YEAR.search(str(fallback_dates[i]))
            if date:
                years[i] = int(date.group(1))
    return clean, years


def _column(table: pa.Table, name: str) -> np.ndarray:
    column = table.column(name)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column.to_numpy(zero_copy_only=False).astype(object)
    return column.to_numpy()
