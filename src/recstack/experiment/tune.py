"""`recstack tune`: hyper-parameter search with Optuna, selecting on the validation part only.

Each trial fits the model on `train` and scores `valid_metric` on `valid` (history = train);
the test part is never looked at while searching. The study lives in an Optuna journal file
(embedded storage, no server) inside the tuning directory, so an interrupted search resumes
where it stopped when the same command runs again. At the end the best parameters are written
out and one ordinary run (`run_experiment`) trains them and reports valid and test figures.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recstack.errors import RecstackError
from recstack.evaluate.evaluator import evaluate, validation_protocol
from recstack.experiment.config import ExperimentConfig, ModelEntry, SearchDimension, parse_config
from recstack.experiment.run import RunResult, prepare_data, run_experiment
from recstack.fs import atomic_write_text


@dataclass
class TuneResult:
    tune_dir: Path
    best_params: dict[str, Any]
    best_value: float
    n_trials: int
    run: RunResult | None


def _suggest(trial, name: str, dimension: SearchDimension) -> Any:
    if dimension.choices is not None:
        return trial.suggest_categorical(name, dimension.choices)
    if dimension.is_int:
        return trial.suggest_int(name, int(dimension.low), int(dimension.high))
    return trial.suggest_float(name, dimension.low, dimension.high, log=dimension.log)


def tune(config: ExperimentConfig | dict | str, *, n_trials: int | None = None, final_run: bool = True,
         progress: bool = True, console=None) -> TuneResult:
    """Search `config.tune.space` for `config.tune.model`; return the best parameters (by validation)."""
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
    dataset, split = prepare_data(config)
    if len(split.valid) == 0:
        raise RecstackError("tuning selects on the validation part, and this split has none; use a split with valid")
    from recstack.models import build

    label = config.valid_metric
    tune_dir = Path(config.output_dir) / f"tune-{dataset.name}-{spec.model.rpartition(':')[2]}-{split.fingerprint()}"
    tune_dir.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(tune_dir / "study.journal")))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="recstack", storage=storage, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=config.seed),
    )
    history = split.history("valid")

    def objective(trial) -> float:
        params = {**spec.params, **{name: _suggest(trial, name, dim) for name, dim in spec.space.items()}}
        params.setdefault("seed", config.seed)
        started = time.perf_counter()
        model = build(spec.model, params)
        if hasattr(model, "use_dataset"):  # models that read side information (item texts)
            model.use_dataset(dataset)
        with validation_protocol(mask_history=config.mask_history):
            model.fit(split.train, split.valid)
        trial.set_user_attr("fit_seconds", time.perf_counter() - started)
        value = evaluate(model, history, split.valid, metrics=[label], mask_history=config.mask_history,
                         memory_budget_mb=config.memory_budget_mb).metrics[label]
        if progress and console is not None:
            console.print(f"trial {trial.number}: {label} {value:.4f}  {params}")
        return value if math.isfinite(value) else float("-inf")

    done = len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE])
    remaining = max(0, (n_trials or spec.n_trials) - done)
    if remaining:
        study.optimize(objective, n_trials=remaining, timeout=spec.timeout_s, catch=())
    best = study.best_trial
    best_params = {**spec.params, **best.params}
    trials = [
        {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
         "fit_seconds": t.user_attrs.get("fit_seconds")}
        for t in study.trials
    ]
    atomic_write_text(tune_dir / "trials.json", json.dumps(trials, indent=1))
    atomic_write_text(tune_dir / "best.json", json.dumps(
        {"model": spec.model, "params": best_params, label: best.value, "selected_on": "valid",
         "n_trials": len(trials), "split_fingerprint": split.fingerprint()}, indent=1))

    run = None
    if final_run:
        final = config.model_copy(update={
            "tune": None,
            "models": [ModelEntry(name=spec.model, params=best_params, label=f"{spec.model.rpartition(':')[2]}-tuned")],
        })
        run = run_experiment(final, progress=progress, console=console)
    return TuneResult(tune_dir, best_params, float(best.value), len(trials), run)
