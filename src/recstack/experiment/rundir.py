"""The run directory's layout: every file name in it, and the one writer and reader of each file.

`run` writes a run directory, `report`, `compare`, `recommend` and `tune` read it back; they spell
no file name of their own, so the layout can change in one place. Readers of the JSON files fail
with one `RecstackError` line that names a missing or damaged file (never a traceback).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from recstack.data.interactions import Interactions, Vocab
from recstack.errors import RecstackError

if TYPE_CHECKING:  # `compare` and `report` read run directories without the evaluator or the splitters
    from recstack.data.dataset import Dataset
    from recstack.evaluate.evaluator import EvalResult
    from recstack.split.base import Split

CONFIG = "config.yaml"  # the resolved config: every model parameter spelled out
MANIFEST = "manifest.json"  # versions, data and split fingerprints and statistics, timings, peak memory
METRICS = "metrics.json"  # per model: valid and test metrics, beyond-accuracy, slices, best_epoch
CURVES = "curves.json"  # training curves of models that keep `history_`
PER_USER = "per_user.parquet"  # long format, external user ids
PREDICTIONS = "predictions.parquet"  # CTR runs: every model's test-row probabilities (model, row, user, label, p)
HISTORY = "history.npz"  # every event of the split, both vocabularies, item titles
MODELS = "models"  # models/<label>/: each fitted model (a multi-seed run: its first seed's)
LOGS = "logs"  # logs/<label>.jsonl: the epochs of each trained model
# a multi-seed run's further seeds: models/<label>@seed<s>/, logs/<label>@seed<s>.jsonl (no label holds '@')
SEED_MARK = "@seed"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
PLOTS = "plots"  # plots/<chart>.png
SAVED_MODEL = "model.json"  # what marks models/<label>/ as a saved model (written by the model's `save`)

SHOWN_COLUMNS = ("title", "year", "genres")  # the item columns `recommend` prints


def model_dir(run_dir: Path, label: str) -> Path:
    return run_dir / MODELS / label


def seed_label(label: str, seed: int) -> str:
    """The name of `label`'s model of a further seed of a multi-seed run (its first seed's is `label`)."""
    return f"{label}{SEED_MARK}{seed}"


def split_seed_label(name: str) -> tuple[str, int | None]:
    """'ease@seed7' -> ('ease', 7); a plain label -> (label, None)."""
    label, mark, seed = name.partition(SEED_MARK)
    return (label, int(seed)) if mark and seed.isascii() and seed.isdigit() else (name, None)


def saved_models(run_dir: Path) -> list[str]:
    """The names of the saved models, sorted: the labels, and `<label>@seed<s>` for a multi-seed run's
    further seeds (each a name `recommend` takes)."""
    return [p.name for p in sorted((run_dir / MODELS).glob("*")) if (p / SAVED_MODEL).is_file()]


def log_path(run_dir: Path, label: str) -> Path:
    return run_dir / LOGS / f"{label}.jsonl"


def plot_path(run_dir: Path, key: str) -> Path:
    return run_dir / PLOTS / f"{key}.png"


def plot_href(key: str) -> str:
    """The chart's PNG relative to the run directory, as report.html links it."""
    return f"{PLOTS}/{key}.png"


def require(run_dir: Path, names: tuple[str, ...], fix: str) -> None:
    """Refuse a folder that lacks any of `names`: it is not (or not yet) a run directory."""
    if not all((run_dir / name).is_file() for name in names):
        raise RecstackError(f"{str(run_dir)!r} is not a recstack run directory (no {' / '.join(names)}); {fix}")


def is_complete(run_dir: Path) -> bool:
    """Whether a finished run lives there: a run's files appear together, in one rename, when it ends."""
    return (run_dir / MANIFEST).is_file()


# ---- writing ------------------------------------------------------------------------------------

def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; "not computed" reads the same
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(_jsonable(value), indent=1) + "\n")


def write_yaml(path: Path, value: Any) -> None:
    path.write_text(yaml.safe_dump(_jsonable(value), sort_keys=False))


def write_per_user(path: Path, results: dict[str, dict[str, EvalResult]], split: Split) -> None:
    """Per-user values in long format: model, part, user_id, metric, value."""
    _write_per_user(path, [(None, results, split)])


def write_per_user_seeds(path: Path, repetitions: list[tuple[int, dict[str, dict[str, EvalResult]], Split]]) -> None:
    """A multi-seed run's per-user values: as `write_per_user`, each row with its `seed` (seed, results,
    split of that repetition)."""
    _write_per_user(path, repetitions)


def _write_per_user(path: Path, repetitions: list[tuple[int | None, dict[str, dict[str, EvalResult]], Split]]
                    ) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with_seed = any(seed is not None for seed, _, _ in repetitions)
    columns: dict[str, list[np.ndarray]] = {"model": [], "part": [], "user_id": [], "metric": [], "value": []}
    if with_seed:
        columns["seed"] = []
    for seed, results, split in repetitions:
        user_ids = split.train.users.ids
        for label, parts in results.items():
            for part, result in parts.items():
                external = user_ids[result.users]
                for metric, values in result.per_user.items():
                    n = len(values)
                    columns["model"].append(np.full(n, label, dtype=object))
                    columns["part"].append(np.full(n, part, dtype=object))
                    columns["user_id"].append(external)
                    columns["metric"].append(np.full(n, metric, dtype=object))
                    columns["value"].append(np.asarray(values, dtype=np.float64))
                    if with_seed:
                        columns["seed"].append(np.full(n, seed, dtype=np.int64))
    arrays = {}
    for name, chunks in columns.items():
        empty = np.empty(0, dtype=np.float64 if name == "value" else np.int64 if name == "seed" else object)
        joined = np.concatenate(chunks) if chunks else empty
        if name == "user_id" and joined.dtype.kind not in "iu":
            joined = joined.astype(str).astype(object)  # mixed or string ids: one string column
        arrays[name] = pa.array(joined, type=pa.string() if joined.dtype == object else None)
    pq.write_table(pa.table(arrays), path)


def write_history(path: Path, split: Split, dataset: Dataset) -> None:
    """Every event `recommend` masks (train + valid + fold-in + test), the vocabularies and item titles.

    Plain arrays only (no pickle): ids that are neither all numbers nor all strings are not written,
    and `recommend` then rebuilds the split from the source as for a run written before this file.
    """
    everything = split.history("test").concat(split.test)
    users, items = _plain_ids(everything.users.ids), _plain_ids(everything.items.ids)
    if users is None or items is None:
        return
    arrays = {"user": everything.user, "item": everything.item, "user_ids": users, "item_ids": items}
    for name in ("value", "timestamp"):
        if getattr(everything, name) is not None:
            arrays[name] = getattr(everything, name)
    for column in SHOWN_COLUMNS:
        if column in dataset.item_table:
            values = np.asarray(dataset.item_table[column])
            arrays[f"item_{column}"] = values if values.dtype.kind in "biuf" else values.astype(str)
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def _plain_ids(ids: np.ndarray) -> np.ndarray | None:
    if ids.dtype.kind in "iuf":
        return ids
    if ids.dtype.kind in "OU" and all(isinstance(x, str) for x in ids.tolist()):
        return ids.astype(str)
    return None


# ---- reading ------------------------------------------------------------------------------------

def _damaged(path: Path, what: str) -> RecstackError:
    return RecstackError(f"{str(path)!r} {what}; the run directory is damaged: run the experiment again")


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise _damaged(path, "is missing") from None
    except UnicodeDecodeError:
        raise _damaged(path, "is not text") from None
    except OSError as exc:
        raise _damaged(path, f"cannot be read ({exc.strerror or exc})") from None


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object written by `write_json`; a missing, damaged or non-object file is one error line."""
    try:
        value = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise _damaged(path, f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(value, dict):
        raise _damaged(path, f"holds a JSON {type(value).__name__}, not an object")
    return value


def read_manifest(run_dir: Path) -> dict[str, Any]:
    return read_json(run_dir / MANIFEST)


def read_metrics(run_dir: Path) -> dict[str, Any]:
    return read_json(run_dir / METRICS)


def read_curves(run_dir: Path) -> dict[str, Any]:
    """Training curves; {} for a run without the file."""
    path = run_dir / CURVES
    return read_json(path) if path.exists() else {}


def read_config_dict(run_dir: Path) -> dict[str, Any]:
    """config.yaml as plain data (`load_config` validates it into an `ExperimentConfig`)."""
    path = run_dir / CONFIG
    try:
        value = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as exc:
        raise _damaged(path, f"is not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(value, dict):
        raise _damaged(path, "holds no mapping of settings")
    return value


def read_history(path: Path) -> tuple[Interactions, dict[str, np.ndarray]] | None:
    """The events and item columns `write_history` saved, or None when the run has no such file."""
    from recstack.models.protocol import read_state  # one place reads .npz files and names a damaged one

    if not path.is_file():
        return None
    arrays = read_state(path)
    everything = Interactions(arrays["user"], arrays["item"], Vocab(arrays["user_ids"], name="user"),
                              Vocab(arrays["item_ids"], name="item"), value=arrays.get("value"),
                              timestamp=arrays.get("timestamp"), presorted=True)
    return everything, {c: arrays[f"item_{c}"] for c in SHOWN_COLUMNS if f"item_{c}" in arrays}
