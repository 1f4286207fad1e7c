"""`recstack tune`: hyper-parameter search with Optuna, selecting on the validation part only.

Each trial fits the model on `train` and scores `valid_metric` on `valid` (history = train);
the test part is never looked at while searching. The study lives in an Optuna journal file
(embedded storage, no server) inside the tuning directory, so an interrupted search resumes
where it stopped when the same command runs again. At the end the best parameters are written
out and one ordinary run (`run_experiment`) trains them and reports valid and test figures.

A study is identified by its definition (`study_definition`): the search space with each range's
kind, the metric and direction, the fixed parameters, the data and split fingerprints, the
protocol and the recstack version. Its name is a readable prefix plus a hash of that definition,
so changing any of them starts a new study, and a study resumed by name with a different
definition is refused, naming what changed: a study's best is always its own trials' best under
its own metric. The best setting's run is not trained again when an identical one already exists.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.markup import escape

from recstack.data.dataset import Dataset
from recstack.errors import RecstackError, RecstackWarning
from recstack.evaluate.evaluator import evaluate
from recstack.experiment import rundir
from recstack.experiment.config import ExperimentConfig, ModelEntry, SearchDimension, parse_config
from recstack.experiment.run import (RunResult, cold_warning, describe_counts, history_counts, prepare_data,
                                     run_experiment)
from recstack.experiment.steps import cold_users, fit_entry, scoring
from recstack.fs import atomic_write_text, check_writable
from recstack.split.base import Split

_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


@dataclass
class TuneResult:
    tune_dir: Path
    best_params: dict[str, Any]
    best_value: float
    n_trials: int  # finished trials of the study, resumed ones included
    run: RunResult | None  # the best setting's run when it was trained now
    metric: str = ""
    study_name: str = ""
    best_trial: int = -1
    n_run_now: int = 0
    n_resumed: int = 0
    target_trials: int = 0
    run_dir: Path | None = None  # the best setting's run, trained now or found complete from before
    run_reused: bool = False
    n_failed: int = 0  # trials recorded as failed (the Ray backend records a raising trial and goes on)

    def summary(self) -> list[str]:
        """Lines for a person: the best, what ran now and what was resumed, the final run."""
        lines = [f"best {self.metric} on valid: {self.best_value:.4f} (trial {self.best_trial} of study "
                 f"{self.study_name}); params {self.best_params}"]
        trials = f"{self.n_run_now} trials run now, {self.n_resumed} resumed"
        if self.n_run_now == 0 and self.n_resumed >= self.target_trials:
            trials += (f": the study already has {self.n_resumed} finished trials, at least the "
                       f"{self.target_trials} asked for; raise --n-trials to search further")
        else:
            trials += f" ({self.n_trials} finished, {self.target_trials} asked for)"
        if self.n_failed:
            trials += f"; {self.n_failed} failed, their errors are in trials.json"
        lines.append(trials)
        if self.run_reused:
            lines.append(f"best setting not re-trained: its run with this exact config already exists: {self.run_dir}")
        elif self.run_dir is not None:
            lines.append(f"best setting trained in a new run: {self.run_dir}")
        lines.append(f"study: {self.tune_dir}")
        return lines


def _suggest(trial, name: str, dimension: SearchDimension) -> Any:
    if dimension.choices is not None:
        return trial.suggest_categorical(name, dimension.choices)
    if dimension.is_int:
        return trial.suggest_int(name, int(dimension.low), int(dimension.high), log=dimension.log)
    return trial.suggest_float(name, dimension.low, dimension.high, log=dimension.log)


# ---- the study's identity -------------------------------------------------------------------------

def _dimension_definition(dimension: SearchDimension) -> dict[str, Any]:
    """The range as Optuna will sample it (the kind decides the distribution, as `_suggest` does)."""
    if dimension.choices is not None:
        return {"kind": "categorical", "choices": list(dimension.choices)}
    if dimension.is_int:  # "log" only when set, so that the studies of linear integer ranges keep their identity
        return {"kind": "int", "low": int(dimension.low), "high": int(dimension.high)} | ({"log": True} if dimension.log else {})
    return {"kind": "float", "low": float(dimension.low), "high": float(dimension.high), "log": bool(dimension.log)}


def _fixed_params(config: ExperimentConfig) -> dict[str, Any]:
    """The parameters every trial shares; the experiment seed is the model seed unless one is fixed."""
    from recstack.models import resolve

    params = dict(config.tune.params)
    if "seed" in getattr(resolve(config.tune.model).Config, "model_fields", {}):
        params.setdefault("seed", config.seed)
    return params


def _data_fingerprint(dataset: Dataset) -> str:
    """Interactions plus the side tables and knowledge graph that some models read while fitting."""
    h = hashlib.sha1(dataset.interactions.fingerprint().encode())
    for kind, table in (("item", dataset.item_table), ("user", dataset.user_table)):
        for name in sorted(table):
            column = np.asarray(table[name])
            h.update(f"{kind}:{name}:{column.dtype.str}".encode())
            h.update("\x1f".join(map(str, column.tolist())).encode() if column.dtype == object
                     else np.ascontiguousarray(column).tobytes())
    if dataset.kg is not None:
        for array in (dataset.kg.head, dataset.kg.relation, dataset.kg.tail, dataset.kg.item_entity):
            h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()[:16]


def study_definition(config: ExperimentConfig, dataset: Dataset, split: Split) -> dict[str, Any]:
    """Everything that decides what a trial scores: an equal definition means the same study."""
    from recstack import __version__

    spec = config.tune
    definition = {
        "model": spec.model,
        "space": {name: _dimension_definition(dim) for name, dim in sorted(spec.space.items())},
        "metric": config.valid_metric,
        "direction": "maximize",  # every metric recstack selects on is higher-is-better
        "params": _fixed_params(config),
        "data": {"name": dataset.name, "fingerprint": _data_fingerprint(dataset)},
        "split": split.fingerprint(),
        "mask_history": config.mask_history,
        "recstack": __version__,
    }
    if config.score_precision != "fp32":  # likewise: only a non-default precision enters the definition
        definition["score_precision"] = config.score_precision
    c = config.cold_users
    if (c.policy, c.min_history) != ("include", 1):  # the default leaves earlier studies' names as they were
        definition["cold_users"] = {"policy": c.policy, "min_history": c.min_history, "fallback": c.fallback}
    # one JSON round trip: what the journal gives back compares equal to what was computed here
    return json.loads(json.dumps(definition, sort_keys=True, default=str))


def _definition_hash(definition: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(definition, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:10]


def _describe_dimension(dimension: Any) -> str:
    if not isinstance(dimension, dict):
        return repr(dimension)
    if dimension.get("kind") == "categorical":
        return f"choices {dimension.get('choices')}"
    kind = ("log-" if dimension.get("log") else "") + str(dimension.get("kind"))
    return f"{kind} [{dimension.get('low')}, {dimension.get('high')}]"


def _flat(definition: dict[str, Any]) -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in definition.items():
        if key == "space" and isinstance(value, dict):
            flat.update({f"space.{name}": _describe_dimension(dim) for name, dim in value.items()})
        elif isinstance(value, dict):
            flat.update({f"{key}.{sub}": repr(v) if isinstance(v, str) else str(v) for sub, v in value.items()})
        else:
            flat[key] = str(value)
    return flat


def definition_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'metric was NDCG@10, now Precision@10'-style lines for every entry that differs."""
    before, after = _flat(old), _flat(new)
    keys = [*after, *(key for key in before if key not in after)]
    return [f"{key} was {before.get(key, 'absent')}, now {after.get(key, 'absent')}"
            for key in keys if before.get(key) != after.get(key)]


def _open_study(optuna, storage, name: str, definition: dict[str, Any], tune_dir: Path):
    """Create the study, or resume it when its stored definition is this one; refuse otherwise."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    stored = study.user_attrs.get("definition")
    if stored is None and study.trials:
        raise RecstackError(f"study {name!r} in {str(tune_dir)!r} records no definition (an older recstack made "
                            "it), so resuming it could mix results; name another study or remove that folder")
    if stored is not None and stored != definition:
        raise RecstackError(f"study {name!r} in {str(tune_dir)!r} was defined differently: "
                            f"{'; '.join(definition_changes(stored, definition))}; run it with the settings it was "
                            "made with, or name another study (unnamed, each definition gets its own)")
    if stored is None:
        study.set_user_attr("definition", definition)
    return study


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# ---- the search ----------------------------------------------------------------------------------

@dataclass
class TrialInputs:
    """What every trial reads: the experiment, its data and split, the cold-user policy and the
    scoring of the validation part (shipped once to Ray's object store by the Ray backend)."""

    config: ExperimentConfig
    dataset: Dataset
    split: Split
    policy: Any
    valid: Any

    @property
    def label(self) -> str:
        return self.config.valid_metric


def score_trial(inputs: TrialInputs, suggested: dict[str, Any]) -> tuple[float, float]:
    """One trial, on either backend: fit the suggested setting by the very steps the final run takes
    and score the validation part; (value, -inf when not finite; setup + fit seconds)."""
    spec, valid = inputs.config.tune, inputs.valid
    fitted = fit_entry(inputs.config, ModelEntry(name=spec.model, params={**spec.params, **suggested}),
                       inputs.dataset, inputs.split, cold_users=inputs.policy)
    value = evaluate(fitted.model, valid.history, valid.truth, **valid.options).metrics[inputs.label]
    return (value if math.isfinite(value) else float("-inf")), fitted.setup_seconds + fitted.fit_seconds


def ray_settings(config: ExperimentConfig) -> Any:
    from recstack.cluster import RaySettings

    return RaySettings() if config.ray is None else RaySettings(config.ray.address, config.ray.workers)


def tune(config: ExperimentConfig | dict | str, *, n_trials: int | None = None, study: str | None = None,
         final_run: bool = True, progress: bool = True, console=None) -> TuneResult:
    """Search `config.tune.space` for `config.tune.model`; return the best parameters (by validation).

    `n_trials` is the number of finished trials the study should hold (default `tune.n_trials`);
    `study` names the study (default: derived from its definition, see the module docstring).
    With a `ray` section in the config the trials run as Ray Tune trials (`recstack.cluster.tune`)
    on its settings (a local instance by default), searched by Optuna in the same study: the
    artefacts and identity rules are the local backend's.
    """
    try:
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend
    except ImportError:
        raise RecstackError("recstack tune needs Optuna: pip install 'recstack[tune]' (or pip install optuna)") from None
    if isinstance(config, (str, Path)):
        from recstack.experiment.config import load_config

        config = load_config(config)
    config = parse_config(config)
    spec = config.tune
    if spec is None:
        raise RecstackError("this config has no 'tune' section: add tune: {model, space, n_trials}")
    if n_trials is not None and n_trials < 1:
        raise RecstackError(f"--n-trials must be at least 1, got {n_trials}")
    if study is not None and not _STUDY_NAME.fullmatch(study):
        raise RecstackError(f"study name {study!r} must be letters, digits, '.', '_', '+' or '-' (it names a folder)")
    config.check_devices()  # before the data is read and any trial trains, as `run` does
    if config.ray is not None:  # an unreachable cluster is one line before any data is read
        from recstack.cluster import connect

        connect(ray_settings(config))
    try:
        check_writable(config.output_dir)
    except OSError as exc:
        raise RecstackError(f"output_dir {config.output_dir!r} cannot be written ({exc.strerror or exc}); "
                            "choose a writable folder") from None
    dataset, split = prepare_data(config)
    if len(split.valid) == 0:
        raise RecstackError("tuning selects on the validation part, and this split has none; use a split with valid")
    label = config.valid_metric
    definition = study_definition(config, dataset, split)
    model_name = spec.model.rpartition(":")[2].rpartition(".")[2]
    name = study or "-".join(
        _UNSAFE.sub("_", part).strip("._") or "x" for part in (dataset.name, model_name, _definition_hash(definition)))
    tune_dir = Path(config.output_dir) / f"tune-{name}"
    tune_dir.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(tune_dir / "study.journal")))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna_study = _open_study(optuna, storage, name, definition, tune_dir)
    previous = _read_json(tune_dir / "best.json")
    # a sampler seeded as in the last call would propose that call's trials again; offsetting the seed
    # by the trials already made keeps a resumed search reproducible and new
    optuna_study.sampler = optuna.samplers.TPESampler(seed=config.seed + len(optuna_study.trials))
    fixed = _fixed_params(config)
    policy = cold_users(config, dataset, split)  # the fallback model (if any) is fitted once, not per trial
    counts = history_counts(split, policy)["valid"]  # what the trials are scored on, as `run` shows it
    if progress and console is not None:
        console.print(escape(f"valid: {describe_counts(counts)}"), soft_wrap=True)
    if (warning := cold_warning("valid", counts)) is not None:
        warnings.warn(warning, RecstackWarning, stacklevel=2)
    valid = scoring(config, split, "valid", metrics=[label], cold_users=policy)  # as the final run scores valid
    inputs = TrialInputs(config, dataset, split, policy, valid)

    def objective(trial) -> float:
        suggested = {param: _suggest(trial, param, dim) for param, dim in spec.space.items()}
        value, fit_seconds = score_trial(inputs, suggested)
        trial.set_user_attr("fit_seconds", fit_seconds)
        if progress and console is not None:  # as printed; the step adds the experiment seed by the same rule
            console.print(escape(f"trial {trial.number}: {label} {value:.4f}  {({**fixed, **suggested})}"),
                          soft_wrap=True)
        return value

    def finished() -> int:
        return sum(t.state == optuna.trial.TrialState.COMPLETE for t in optuna_study.trials)

    target = n_trials or spec.n_trials
    n_resumed = finished()
    remaining = max(0, target - n_resumed)
    if progress and console is not None:
        plan = f"running {remaining} more" if remaining else "none to run"
        console.print(escape(f"study {name}: {n_resumed} finished trials resumed, {target} asked for; {plan}"),
                      soft_wrap=True)
    if remaining and config.ray is not None:
        from recstack.cluster.tune import search_on_ray

        search_on_ray(optuna_study, inputs, remaining, settings=ray_settings(config), tune_dir=tune_dir,
                      say=(lambda line: console.print(escape(line), soft_wrap=True)) if progress and console else None)
    elif remaining:
        optuna_study.optimize(objective, n_trials=remaining, timeout=spec.timeout_s, catch=())
    n_finished = finished()
    if n_finished == 0:
        raise RecstackError(f"study {name!r} has no finished trial to choose from; run it again")
    best = optuna_study.best_trial
    best_params = {**spec.params, **best.params}
    trials = [
        {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
         "fit_seconds": t.user_attrs.get("fit_seconds"),
         **({"error": t.user_attrs["error"]} if "error" in t.user_attrs else {})}
        for t in optuna_study.trials
    ]
    atomic_write_text(tune_dir / "trials.json", json.dumps(trials, indent=1))
    summary = {"study": name, "model": spec.model, "params": best_params, "metric": label, label: best.value,
               "best_trial": best.number, "selected_on": "valid", "n_trials": n_finished,
               "split_fingerprint": split.fingerprint(), "definition": definition}
    if isinstance(previous.get("final_runs"), dict):  # kept until a final run is chosen below
        summary["final_runs"] = previous["final_runs"]
    atomic_write_text(tune_dir / "best.json", json.dumps(summary, indent=1))

    result = TuneResult(tune_dir, best_params, float(best.value), n_finished, None, metric=label, study_name=name,
                        best_trial=best.number, n_run_now=n_finished - n_resumed, n_resumed=n_resumed,
                        target_trials=target, n_failed=sum(t["state"] == "FAIL" for t in trials))
    if final_run:
        final = config.model_copy(update={
            "tune": None,
            "models": [ModelEntry(name=spec.model, params=best_params, label=f"{model_name}-tuned")],
        })
        # the same key run_experiment derives its folder from: equal keys, identical runs
        key = hashlib.sha1((json.dumps(final.resolved().to_dict(), sort_keys=True) + split.fingerprint())
                           .encode()).hexdigest()[:16]
        runs = previous.get("final_runs") if isinstance(previous.get("final_runs"), dict) else {}
        earlier = runs.get(key) if isinstance(runs.get(key), dict) else {}
        if earlier.get("run_dir") and rundir.is_complete(Path(str(earlier["run_dir"]))):
            result.run_dir, result.run_reused = Path(str(earlier["run_dir"])), True
        else:
            result.run = run_experiment(final, progress=progress, console=console)
            result.run_dir = result.run.run_dir
        summary["final_run"] = str(result.run_dir)
        summary["final_runs"] = {**runs, key: {"run_dir": str(result.run_dir), "best_trial": best.number}}
        atomic_write_text(tune_dir / "best.json", json.dumps(summary, indent=1))
    return result
