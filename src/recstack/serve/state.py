"""What the server answers from: one loaded run (`ServedRun`) plus the events that arrived since, and
the holder that swaps runs atomically (`Server`).

A run is loaded whole before it is swapped in: its saved models (each by its own `load`, never
pickle), the events of its split (`history.npz`), the item columns and the fallback model. The
events posted to the server live in the `EventStore` and, for scoring, in a per-user overlay of the
loaded run, so a history-based model sees a user's new events at the next request.
"""

from __future__ import annotations

import hashlib
import logging
import resource
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from recstack.data.interactions import Interactions, UnknownIdError, Vocab
from recstack.errors import RecstackError
from recstack.experiment import rundir
from recstack.serve import ann
from recstack.serve.events import Event, EventStore

log = logging.getLogger("recstack.serve")

_SEED_MARK = getattr(rundir, "SEED_MARK", "@seed")
DEFAULT_FALLBACK = "pop"  # serves cold users when the run's cold-user policy names no fallback
# A model whose warm-up ranking takes less than this is answered on the event loop: the thread-pool
# hop of a sync route costs ~0.1 ms, as much as such a ranking; a slower model (a transformer, a
# beam search) runs in the pool so that it does not hold up the other requests of its worker.
INLINE_SECONDS = 0.002


@dataclass
class ServedRun:
    """A run directory loaded for serving. External ids in, external ids out."""

    run_dir: Path
    config: Any  # ExperimentConfig
    models: dict[str, Any]  # label -> loaded model
    model_names: dict[str, str]  # label -> registered name
    versions: dict[str, str]  # label -> content hash of its saved files
    default_label: str
    base: Interactions  # every event of the run's split (train + valid + test), sorted by user
    columns: dict[str, np.ndarray]  # item title / year / genres where the data had them
    fallback: Any
    fallback_name: str
    min_history: int  # fewer history events than this: cold (the run's cold-user policy)
    load_seconds: float = 0.0
    ann: dict[str, Any] = field(default_factory=dict)  # label -> ann.AnnIndex, for large catalogues only
    inline: dict[str, bool] = field(default_factory=dict)  # label -> answered on the event loop (warm-up was fast)
    last_seq: int = 0  # the last store event applied to the overlay
    _overlay: dict[str, list[tuple[int, int, float]]] = field(default_factory=dict)  # user -> (item, t, value)
    _counts: np.ndarray = field(default=None)  # type: ignore[assignment]  # interactions per item, live
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._counts = self.base.item_counts().astype(np.int64)
        # the index a user outside the run takes: one slot after the fitted users (see UserCoverage)
        ids = self.base.users.ids
        extra = (ids.max() + 1 if len(ids) else 0) if ids.dtype.kind in "iuf" else "\x00ad-hoc user"
        self.one_more_user = Vocab(np.concatenate([ids, np.array([extra], dtype=ids.dtype)]), name="user")
        # genre -> items with it, built once: a filter is then a few vectorised ORs per request
        self._genre_items: dict[str, np.ndarray] = {}
        for item, genres in enumerate(self.columns.get("genres", [])):
            for genre in str(genres).split("|") if genres else ():
                self._genre_items.setdefault(genre.lower(), []).append(item)  # type: ignore[arg-type]
        self._genre_items = {g: np.asarray(items, dtype=np.int64) for g, items in self._genre_items.items()}
        self._item_matrix = self.base.matrix().tocsc()  # for item-to-item similarity

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def n_items(self) -> int:
        return self.base.n_items

    # ---- ids ------------------------------------------------------------------------------------
    def item_index(self, item_id: Any) -> int:
        """Dense index of an external item id; `UnknownIdError` names an id outside the catalogue."""
        return int(self.base.items.index(item_id))

    def item_id(self, item_idx: int) -> Any:
        value = self.base.items.id_of(int(item_idx))
        return value.item() if isinstance(value, np.generic) else value

    def item_record(self, item_idx: int) -> dict[str, Any]:
        """An item as the API shows it: its id, title, year and genres (None where the data has none)
        and its interaction count, posted events included."""
        item_idx = int(item_idx)
        record = {column: values[item_idx] for column, values in self._shown}
        with self._lock:
            record["n_interactions"] = int(self._counts[item_idx])
        return record

    @cached_property
    def _shown(self) -> list[tuple[str, list[Any]]]:
        # the shown columns as Python lists, converted once: per-item numpy scalar conversion was a
        # tenth of a request's time (issue 14's profile)
        def plain(column: str, values: np.ndarray) -> list[Any]:
            listed = values.tolist()
            return [None if v is not None and v < 0 else v for v in listed] if column == "year" else listed

        return [("item_id", self.base.items.ids.tolist())] + [
            (column, plain(column, np.asarray(self.columns[column])) if column in self.columns
             else [None] * self.n_items) for column in rundir.SHOWN_COLUMNS]

    def _base_index(self, user_id: Any) -> int | None:
        try:
            return int(self.base.users.index(user_id))
        except UnknownIdError:
            return None

    # ---- histories ------------------------------------------------------------------------------
    def user_history(self, user_id: Any) -> tuple[int, Interactions, bool, int]:
        """(user index, a history holding the user's events, known to the run, events since the run).

        A model reads only the rows of the users it scores (as in evaluation, where every user's
        history is one log), so a user of the run without posted events is scored from the run's
        own log: nothing is built per request. Otherwise the history is this user's events alone
        (the run's and the posted ones). A user outside the run takes the slot after the fitted
        users. `events_of` reads the user's row.
        """
        known = self._base_index(user_id)
        with self._lock:
            new = list(self._overlay.get(str(user_id), ()))
        if known is not None and not new:
            return known, self.base, True, 0
        if known is None:
            items = np.array([e[0] for e in new], dtype=np.int32)
            times = np.array([e[1] for e in new], dtype=np.int64)
            values = np.array([e[2] for e in new], dtype=np.float32)
            return len(self.base.users), self._history(len(self.base.users), items, times, values), False, len(new)
        lo, hi = self.base.indptr[known], self.base.indptr[known + 1]
        b = self.base
        items = np.concatenate([b.item[lo:hi], np.array([e[0] for e in new], dtype=np.int32)])
        times = np.concatenate([b.timestamp[lo:hi] if b.timestamp is not None else np.zeros(hi - lo, np.int64),
                                np.array([e[1] for e in new], dtype=np.int64)])
        values = np.concatenate([b.value[lo:hi] if b.value is not None else np.ones(hi - lo, np.float32),
                                 np.array([e[2] for e in new], dtype=np.float32)])
        return known, self._history(known, items, times, values), True, len(new)

    def adhoc_history(self, item_idx: np.ndarray) -> tuple[int, Interactions]:
        """An anonymous user's history from the items sent with the request, in the order sent."""
        n = len(item_idx)
        user = len(self.base.users)
        return user, self._history(user, np.asarray(item_idx, dtype=np.int32), np.arange(n, dtype=np.int64),
                                   np.ones(n, dtype=np.float32))

    def _history(self, user: int, items: np.ndarray, times: np.ndarray, values: np.ndarray) -> Interactions:
        users = self.base.users if user < len(self.base.users) else self.one_more_user
        b = self.base
        # the run's events stay in their saved order (a file-ordered run's sequences are not re-sorted
        # by time) and posted events follow in the order they arrived
        return Interactions.of_one_user(user, items, users, b.items, value=values if b.value is not None else None,
                                        timestamp=times if b.timestamp is not None else None, order="file")

    @staticmethod
    def events_of(history: Interactions, user: int) -> np.ndarray:
        """The user's items in `history`, oldest first."""
        ends = history.indptr
        return history.item[ends[user]:ends[user + 1]]

    @staticmethod
    def recent_items(items: np.ndarray, n: int) -> np.ndarray:
        """The last `n` of a user's items, newest first."""
        return items[-n:][::-1] if n else items[:0]

    # ---- live events ----------------------------------------------------------------------------
    def apply(self, events: Iterable[Event]) -> int:
        """Add stored events to the overlay; events naming an item outside this run's catalogue (stored
        while another run was served) are skipped. Returns how many were applied."""
        applied = 0
        with self._lock:
            for e in events:
                self.last_seq = max(self.last_seq, e.seq)
                try:
                    item = int(self.base.items.index(e.item_id))
                except UnknownIdError:
                    continue
                self._overlay.setdefault(str(e.user_id), []).append(
                    (item, int(e.timestamp), 1.0 if e.value is None else float(e.value)))
                self._counts[item] += 1
                applied += 1
        return applied

    def n_new_events(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._overlay.values())

    def popularity(self) -> np.ndarray:
        with self._lock:
            return self._counts.copy()

    # ---- items ----------------------------------------------------------------------------------
    def allowed_items(self, genres: list[str] | None, year_min: int | None, year_max: int | None,
                      exclude: np.ndarray | None) -> np.ndarray | None:
        """Boolean mask of the items a filter keeps, or None when nothing is filtered."""
        if not genres and year_min is None and year_max is None and (exclude is None or not len(exclude)):
            return None
        keep = np.ones(self.n_items, dtype=bool)
        if genres:
            if "genres" not in self.columns:
                raise RecstackError("this run's items have no genres to filter on")
            with_genre = np.zeros(self.n_items, dtype=bool)
            for genre in genres:
                with_genre[self._genre_items.get(genre.lower(), np.zeros(0, dtype=np.int64))] = True
            keep &= with_genre
        if year_min is not None or year_max is not None:
            if "year" not in self.columns:
                raise RecstackError("this run's items have no year to filter on")
            years = np.asarray(self.columns["year"], dtype=np.int64)
            if year_min is not None:
                keep &= years >= year_min
            if year_max is not None:
                keep &= (years <= year_max) & (years >= 0)
        if exclude is not None and len(exclude):
            keep[exclude] = False
        return keep

    def similar_items(self, item_idx: np.ndarray, candidates: np.ndarray | None = None) -> np.ndarray:
        """Cosine similarity of the items' user sets in the run's events: (len(item_idx), C or n_items)."""
        x = self._item_matrix
        left = x[:, np.asarray(item_idx, dtype=np.int64)]
        right = x if candidates is None else x[:, np.asarray(candidates, dtype=np.int64)]
        co = np.asarray((left.T @ right).todense(), dtype=np.float64)
        counts = self.base.item_counts().astype(np.float64)
        right_counts = counts if candidates is None else counts[np.asarray(candidates, dtype=np.int64)]
        norms = np.sqrt(counts[np.asarray(item_idx, dtype=np.int64)])[:, None] * np.sqrt(right_counts)[None, :]
        return np.divide(co, norms, out=np.zeros_like(co), where=norms > 0)


def model_version(path: Path) -> str:
    """A short content hash of a saved model's folder (names, sizes, modification times, model.json)."""
    h = hashlib.sha1()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = file.stat()
        h.update(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    h.update((path / rundir.SAVED_MODEL).read_bytes())
    return h.hexdigest()[:12]


def peak_memory_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def load_served(run_dir: str | Path, labels: list[str] | None = None, *, trust: bool = False,
                ann_min_items: int = ann.ANN_MIN_ITEMS) -> ServedRun:
    """Load a finished run directory for serving: its saved models (all, or `labels`), its events,
    item columns and cold-user fallback. Anything wrong raises one `RecstackError` naming it.
    Dot-product models over at least `ann_min_items` items get an HNSW index (`serve.ann`), loaded
    from run_dir/ann/ or built and saved there."""
    from recstack.experiment.config import load_config
    from recstack.models import load_model

    tick = time.perf_counter()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RecstackError(f"{str(run_dir)!r} is not a directory; give a run directory written by `recstack run`")
    rundir.require(run_dir, (rundir.MANIFEST, rundir.CONFIG), "give a folder that `recstack run` wrote")
    config = load_config(run_dir / rundir.CONFIG, trust=trust)
    # a multi-seed run's further seeds (models/<label>@seed<s>) are served only when asked for by name
    saved = [name for name in rundir.saved_models(run_dir) if _SEED_MARK not in name]
    if not saved:
        raise RecstackError(f"run {run_dir.name!r} has no saved model under {rundir.MODELS}/; nothing to serve")
    chosen = list(dict.fromkeys(labels)) if labels else saved
    unknown = [label for label in chosen if label not in rundir.saved_models(run_dir)]
    if unknown:
        raise RecstackError(f"run {run_dir.name!r} has no saved model {unknown[0]!r}; saved models: "
                            f"{', '.join(rundir.saved_models(run_dir))}")
    base, columns = _run_events(run_dir, trust)
    names = {entry.display: entry.name for entry in config.models}
    models = {label: load_model(rundir.model_dir(run_dir, label), trust=trust) for label in chosen}
    versions = {label: model_version(rundir.model_dir(run_dir, label)) for label in chosen}
    fallback, fallback_name = _fallback(config, base)
    served = ServedRun(run_dir=run_dir.resolve(), config=config, models=models,
                       model_names={label: names.get(label, label) for label in chosen}, versions=versions,
                       default_label=_best_label(run_dir, config, chosen), base=base, columns=columns,
                       fallback=fallback, fallback_name=fallback_name, min_history=config.cold_users.min_history)
    served.ann = ann.prepare(models, run_dir, base, min_items=ann_min_items)
    served.inline = {label: _warm_up(served, label) < INLINE_SECONDS for label in chosen}
    served.load_seconds = time.perf_counter() - tick
    log.info("loaded run %s: models %s, fallback %s, %d users, %d items, %d events in %.2f s; peak memory %.0f MB",
             served.name, ", ".join(chosen), fallback_name, base.n_users, base.n_items, len(base),
             served.load_seconds, peak_memory_mb())
    return served


def _warm_up(served: ServedRun, label: str, repeats: int = 3) -> float:
    """Rank one known user a few times (compiling and caching what a first request would) and return
    the fastest time in seconds; inf when the model fails on the user (the request path reports it)."""
    from recstack.serve.ranking import recommend_one

    active = served.base.active_users()
    if not len(active):
        return float("inf")
    user, history, _, _ = served.user_history(served.base.users.id_of(int(active[0])))
    best = float("inf")
    for _ in range(repeats):
        tick = time.perf_counter()
        try:
            recommend_one(served.models[label], served.fallback, served.fallback_name, label, user, history, 10,
                          min_history=served.min_history, mask_history=True, allowed=None, cold_reason="")
        except Exception:  # noqa: BLE001  serving reports a failing model per request, with the fallback
            return float("inf")
        best = min(best, time.perf_counter() - tick)
    return best


def _run_events(run_dir: Path, trust: bool) -> tuple[Interactions, dict[str, np.ndarray]]:
    saved = rundir.read_history(run_dir / rundir.HISTORY)
    if saved is not None:
        return saved
    # a run written before history.npz: rebuild its split from the source, as `recommend` does
    from recstack.experiment.run import load_run

    run = load_run(run_dir, trust=trust)
    table = run.dataset.item_table
    columns = {c: np.asarray(table[c]) for c in rundir.SHOWN_COLUMNS if c in table}
    return run.split.history("test").concat(run.split.test), columns


def _fallback(config: Any, base: Interactions) -> tuple[Any, str]:
    """The run's cold-user fallback model (default pop), fitted on the run's events: a run directory
    does not save it, and a popularity count takes milliseconds."""
    from recstack.experiment.config import ModelEntry
    from recstack.models import build

    name = config.cold_users.fallback or DEFAULT_FALLBACK
    model = build(name, config.model_config_for(ModelEntry(name=name)))
    return model.fit(base), name


def _best_label(run_dir: Path, config: Any, labels: list[str]) -> str:
    """The served model with the best validation figure of the run (its selection metric), else the first."""
    try:
        metrics = rundir.read_metrics(run_dir)
    except RecstackError:
        return labels[0]
    scored = [(metrics.get(label, {}).get("valid", {}).get(config.valid_metric), label) for label in labels]
    scored = [(value, label) for value, label in scored if isinstance(value, (int, float))]
    return max(scored)[1] if scored else labels[0]


class Server:
    """The served run, swapped atomically, and the event store it shares across runs and across the
    worker processes of one server (`serve(workers=N)`): each worker follows the others' events and
    admin reloads through the store (`refresh`)."""

    def __init__(self, served: ServedRun, store: EventStore, *, trust: bool = False,
                 ann_min_items: int = ann.ANN_MIN_ITEMS) -> None:
        self.store = store
        self.trust = trust
        self.ann_min_items = ann_min_items  # a reloaded run gets the same retrieval threshold
        self._ingest = threading.Lock()  # orders event writes with the replay of a run being swapped in
        self.on_swap: list[Any] = []  # called with each run swapped in (the metrics)
        marker = store.served()
        self._switch = marker[0] if marker else 0  # reloads before this start are history: serve the run given
        self._seen_changes = store.changes.value()
        served.apply(store.since(0))
        self.current = served
        self.started = time.time()

    def ingest(self, events: list[Event], check: Any) -> tuple[int, int]:
        """Validate with `check(run, events)` (raises before anything is written), store durably, then
        make the new events visible to scoring. Returns (new, duplicates)."""
        with self._ingest:
            run = self.current
            check(run, events)
            added = self.store.add(events)
            # everything after the last applied event, in the store's order: another worker's events
            # stored before these ones are applied first, so `last_seq` never skips one
            run.apply(self.store.since(run.last_seq))
        return len(added), len(events) - len(added)

    def refresh(self) -> None:
        """Catch up with what other processes committed to the store since the last look: their events,
        and a run an admin reload switched them to (loaded here too, holding this worker for the load)."""
        changes = self.store.changes.value()
        if changes == self._seen_changes:
            return
        with self._ingest:
            self._seen_changes = changes  # read before the look below: a later commit bumps it again
            marker = self.store.served()
            if marker is not None and marker[0] != self._switch:
                self._switch = marker[0]
                try:
                    served = load_served(marker[1], marker[2], trust=self.trust, ann_min_items=self.ann_min_items)
                except Exception as exc:  # noqa: BLE001  another worker loaded it; keep serving what we have
                    log.error("could not follow the reload to %s (%s: %s); still serving %s", marker[1],
                              type(exc).__name__, exc, self.current.name)
                else:
                    served.apply(self.store.since(0))
                    self._swap(served)
            run = self.current
            run.apply(self.store.since(run.last_seq))

    def reload(self, run_dir: str | Path, labels: list[str] | None = None) -> ServedRun:
        """Load `run_dir` fully, then swap it in; requests keep the old run until the swap, and a run
        that fails to load changes nothing. The other workers follow at their next request."""
        served = load_served(run_dir, labels, trust=self.trust, ann_min_items=self.ann_min_items)
        served.apply(self.store.since(0))  # most of the log, outside the lock
        with self._ingest:
            served.apply(self.store.since(served.last_seq))  # what arrived meanwhile
            self._switch = self.store.mark_served(str(served.run_dir), labels)
            self._swap(served)
        return served

    def _swap(self, served: ServedRun) -> None:
        self.current = served
        for listener in self.on_swap:
            listener(served)
        log.info("now serving run %s", served.name)
