"""Approximate top-k for dot-product models (faiss HNSW), used by the server on large catalogues.

For MF and the graph family score(u, i) = <p_u, q_i> (+ b_i), so an item's vector is [q_i, b_i] and
a user's query [p_u, 1]. The index is HNSW searched by inner product directly (ip-NSW, Morozov and
Babenko, NeurIPS 2018), not by L2 over vectors lifted by sqrt(M^2 - |q|^2) (Bachrach et al. 2014):
queries far from every lifted item defeat the greedy graph search (recall@10 0.29 against 0.998 at
the same efSearch in tests/serve/test_ann.py's catalogue). Why HNSW rather than IVF: docs/serving.md
("Approximate retrieval").

The search over-fetches k + the user's blocked items (history, excluded, filtered out), drops
those, and re-scores the survivors exactly; it answers None, and the caller ranks exactly, when
too much is blocked or the index returns too few. Models are read
through their `DotProductScorer` ability (`user_queries`, `item_vectors`), and checked against their
own `score` before an index is trusted.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import time
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recstack.abilities import DotProductScorer, implements
from recstack.data.interactions import Interactions

log = logging.getLogger("recstack.serve")

ANN_MIN_ITEMS = 50_000  # below this an exact matmul + argpartition costs ~1 ms or less: no index (BENCHMARKS.md)
ANN_FOLDER = "ann"  # run_dir/ann/<label>.faiss and <label>.json: beside models/, never inside a model's
# folder, whose files make the served model version (state.model_version)
MAX_DEPTH = 2048  # more blocked items than this and the over-fetch costs more than the exact ranking

@dataclass(frozen=True)
class HnswParams:
    """HNSW graph degree `M`, build beam `ef_construction`, search beam `ef_search` (None: from the
    catalogue size, `ef_search_for`). M=16 and efConstruction=40 build 1M items in under 3 minutes
    on one core (BENCHMARKS.md, "Serving (issue 14)")."""

    M: int = 16
    ef_construction: int = 40
    ef_search: int | None = None


def ef_search_for(n_items: int) -> int:
    """n_items / 1000 rounded up to a power of two, within [128, 2048]: the beam that kept recall@10
    at 0.97-0.99 in BENCHMARKS.md (128 at 100k items, 1024 at 1M; a fixed 128 fell to 0.75 at 1M)."""
    wanted = 1 << max(0, int(np.ceil(np.log2(max(n_items, 1) / 1000))))
    return int(min(2048, max(128, wanted)))


class DotProduct:
    """A model's scores as <query, item vector>, read through its `DotProductScorer` ability: item
    vectors [q_i, b_i] (views of the model's arrays when it has no bias) and user queries [p_u, 1]."""

    def __init__(self, model: Any) -> None:
        self.model = model
        factors, bias = model.item_vectors()  # the bias as the model adds it (BPR/RelMF: when configured)
        factors = np.asarray(factors, dtype=np.float32)
        self.items = factors if bias is None else np.hstack([factors, np.asarray(bias, np.float32)[:, None]])
        self.has_bias = bias is not None

    @property
    def n_items(self) -> int:
        return self.items.shape[0]

    def queries(self, users: np.ndarray, history: Interactions) -> np.ndarray:
        p = np.asarray(self.model.user_queries(np.asarray(users, dtype=np.int64), history), dtype=np.float32)
        return np.hstack([p, np.ones((len(p), 1), np.float32)]) if self.has_bias else p

    def scores(self, queries: np.ndarray, items: np.ndarray | None = None) -> np.ndarray:
        vectors = self.items if items is None else self.items[items]
        return (queries @ vectors.T).astype(np.float32, copy=False)


def supports(model: Any) -> bool:
    """Whether `model` is a fitted dot-product model (the `DotProductScorer` ability; the index is
    checked against the model's own `score` before it is trusted)."""
    return implements(model, DotProductScorer) and getattr(model, "item_factors_", None) is not None


def hnsw_index(items: np.ndarray, params: HnswParams = HnswParams()) -> Any:
    """A faiss HNSW index over `items` (n, d) searched by inner product (faiss threads: OMP_NUM_THREADS)."""
    import faiss

    index = faiss.IndexHNSWFlat(items.shape[1], params.M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = params.ef_construction
    index.add(np.ascontiguousarray(items, dtype=np.float32))
    return index


def vectors_key(items: np.ndarray, params: HnswParams) -> str:
    """What makes a saved index current: the exact item vectors, the HNSW parameters, faiss's version."""
    import faiss

    h = hashlib.sha1(np.ascontiguousarray(items, dtype=np.float32).tobytes())
    built_with = {"M": params.M, "ef_construction": params.ef_construction, "metric": "ip"}  # ef_search: per query
    h.update(json.dumps({**built_with, "faiss": faiss.__version__, "shape": items.shape}).encode())
    return h.hexdigest()


class AnnIndex:
    """An inner-product HNSW index over a dot-product model's item vectors; `top_k` answers with exact scores."""

    def __init__(self, view: DotProduct, index: Any, params: HnswParams, source: str) -> None:
        self.view, self.index, self.params = view, index, params
        self.ef_search = params.ef_search or ef_search_for(view.n_items)
        self.source = source  # "built" or "loaded": what load_or_build did

    @classmethod
    def build(cls, view: DotProduct, params: HnswParams = HnswParams()) -> "AnnIndex":
        return cls(view, hnsw_index(view.items, params), params, "built")

    def search(self, queries: np.ndarray, depth: int, ef_search: int | None = None) -> np.ndarray:
        """The `depth` nearest items of each query (B, depth), -1 where HNSW found fewer."""
        import faiss

        # per-call parameters, not index.hnsw.efSearch: requests search the shared index concurrently
        ef = max(ef_search or self.ef_search, depth)
        search = faiss.SearchParametersHNSW(efSearch=ef)
        _, labels = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), depth, params=search)
        return labels

    def top_k(self, users: np.ndarray, history: Interactions, k: int, *, mask_history: bool,
              allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
        """Top-k (items (B, k), exact scores) for `users`, their history masked when asked and only
        `allowed` items kept; None when the ANN cannot answer for certain (too much blocked, too few found)."""
        users = np.asarray(users, dtype=np.int64)
        if not len(users):
            return np.zeros((0, k), np.int32), np.zeros((0, k), np.float32)
        n_items = self.view.n_items
        blocked = np.zeros((len(users), n_items), dtype=bool)
        if allowed is not None:
            blocked[:] = ~allowed
        if mask_history:
            rows = history.matrix()[users]
            blocked[np.repeat(np.arange(len(users)), np.diff(rows.indptr)), rows.indices] = True
        # over-fetch: the k best unblocked items are among the k + (blocked) nearest, as far as HNSW finds them
        depth = k + int(blocked.sum(axis=1).max())
        if depth > min(MAX_DEPTH, n_items):
            return None
        queries = self.view.queries(users, history)
        found = self.search(queries, depth)
        out_items = np.empty((len(users), k), dtype=np.int32)
        out_scores = np.empty((len(users), k), dtype=np.float32)
        for row, candidates in enumerate(found):
            candidates = candidates[candidates >= 0]
            candidates = candidates[~blocked[row, candidates]]
            if len(candidates) < k:
                return None
            scores = self.view.scores(queries[row:row + 1], candidates)[0]
            # re-scored exactly: the model's scores (to float rounding) in their own order, whatever HNSW's
            order = np.argsort(-scores, kind="stable")[:k]
            out_items[row], out_scores[row] = candidates[order], scores[order]
        return out_items, out_scores

    # ---- persistence ----------------------------------------------------------------------------
    def save(self, path: Path, key: str, seconds: float) -> None:
        """Write `path` (.faiss) and its .json (the key that makes it current) atomically."""
        import faiss

        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            faiss.write_index(self.index, str(partial))
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        meta = {"key": key, **asdict(self.params), "metric": "inner product", "n_items": self.view.n_items,
                "build_seconds": round(seconds, 3)}
        _write_json(path.with_suffix(".json"), meta)

    @classmethod
    def load_or_build(cls, view: DotProduct, path: Path | None, params: HnswParams = HnswParams()) -> "AnnIndex":
        """The index saved at `path` when its key matches the model's item vectors, else a new one
        (saved there when the folder is writable; a read-only run directory is served all the same)."""
        import faiss

        key = vectors_key(view.items, params)
        if path is not None and path.is_file():
            try:
                meta = json.loads(path.with_suffix(".json").read_text())
                if meta.get("key") == key:
                    index = faiss.read_index(str(path))
                    if index.ntotal == view.n_items:
                        return cls(view, index, params, "loaded")
                log.info("ann: %s is stale (the model's item vectors changed): rebuilding", path)
            except Exception as exc:  # noqa: BLE001  a damaged index is rebuilt, never fatal
                log.warning("ann: cannot read %s (%s: %s): rebuilding", path, type(exc).__name__, exc)
        tick = time.perf_counter()
        built = cls.build(view, params)
        seconds = time.perf_counter() - tick
        if path is not None:
            try:
                built.save(path, key, seconds)
            except OSError as exc:
                log.warning("ann: cannot save the index to %s (%s); serving it from memory", path, exc)
        return built


def _write_json(path: Path, value: dict) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_text(json.dumps(value, indent=1))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def agrees_with_model(view: DotProduct, history: Interactions, n_users: int = 8) -> bool:
    """Whether the dot product reproduces the model's own `score` for a few users of `history` (a
    model whose scoring is not what its attributes suggest must not be served by the index)."""
    counts = history.user_counts()
    users = np.flatnonzero(counts > 0)[:n_users].astype(np.int32)
    if not len(users):
        return False
    expected = np.asarray(view.model.score(users, history), dtype=np.float32)
    got = view.scores(view.queries(users, history))
    scale = float(np.abs(expected).max(initial=0.0)) or 1.0
    return got.shape == expected.shape and bool(np.allclose(got, expected, rtol=1e-4, atol=1e-4 * scale))


# ---- the indexes of the served models ---------------------------------------------------------------
_indexes: "weakref.WeakKeyDictionary[Any, AnnIndex]" = weakref.WeakKeyDictionary()


def index_for(model: Any) -> AnnIndex | None:
    """The index `prepare` attached to this loaded model, if any (it goes with the model object)."""
    try:
        return _indexes.get(model)
    except TypeError:  # an object without weak references never has one
        return None


def prepare(models: dict[str, Any], run_dir: Path | None, history: Interactions, *,
            min_items: int = ANN_MIN_ITEMS, params: HnswParams = HnswParams()) -> dict[str, AnnIndex]:
    """Load or build an index for each dot-product model when the catalogue has at least `min_items`
    items, saved under run_dir/ann/. A model without one (faiss missing, a failed build, scores
    that do not match) is ranked exactly; nothing here stops a run from being served."""
    if history.n_items < min_items:
        return {}
    candidates = {label: model for label, model in models.items() if supports(model)}
    if not candidates:
        return {}
    if importlib.util.find_spec("faiss") is None:
        log.warning("ann: faiss is not installed (pip install 'recstack[serve]'): %s ranked exactly",
                    ", ".join(candidates))
        return {}
    out: dict[str, AnnIndex] = {}
    for label, model in candidates.items():
        try:
            view = DotProduct(model)
            if view.n_items != history.n_items or not agrees_with_model(view, history):
                log.warning("ann: %s's scores are not the dot product of its factors: ranked exactly", label)
                continue
            tick = time.perf_counter()
            path = None if run_dir is None else run_dir / ANN_FOLDER / f"{label}.faiss"
            index = AnnIndex.load_or_build(view, path, params)
        except Exception as exc:  # noqa: BLE001  the exact ranking still serves
            log.warning("ann: no index for %s (%s: %s): ranked exactly", label, type(exc).__name__, exc)
            continue
        log.info("ann: %s: HNSW over %d items (M=%d, efConstruction=%d, efSearch=%d) %s in %.2f s", label,
                 view.n_items, params.M, params.ef_construction, index.ef_search, index.source,
                 time.perf_counter() - tick)
        _indexes[model] = index
        out[label] = index
    return out
