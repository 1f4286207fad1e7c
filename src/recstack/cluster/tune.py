"""`recstack tune --backend ray`: the study's trials as Ray Tune trials, Optuna searching.

The study is the local backend's own: the same Optuna journal in the tuning folder, opened and
checked against its definition by `experiment.tune` before this runs, the same TPE sampler and
search space (`tune._suggest`, define-by-run), and each trial scored by `tune.score_trial`, the
local objective. Ray Tune only decides where and how many trials run at once: one CPU each, up
to `workers` together, with the data and split in the object store once.

Faults: a trial whose worker dies (killed, out of memory, node lost) is started again by Tune
(`TRIAL_RESTARTS`) with the same parameters; a trial whose fit or scoring raises is not retried
(it would raise again): it reports no value, Optuna records it as failed, and its error goes
into the study (`trials.json`) next to the finished trials.
"""

from __future__ import annotations

import math
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from recstack.cluster import RaySettings, connect, import_ray

import_ray()  # the one clear error when Ray is missing, before Ray's own imports below
from ray import tune as ray_tune  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

# how often Tune starts a trial again after its worker died
TRIAL_RESTARTS = 2
_VALUE = "value"
_LOGS = "the ray/ folder of the study"


def _trial(params: dict[str, Any], inputs: Any) -> None:
    """The Ray Tune function trainable: one `score_trial`, reported once."""
    from recstack.experiment.tune import score_trial

    try:
        value, fit_seconds = score_trial(inputs, params)
    except Exception as exc:  # an application error is the trial's result, not a reason to retry it
        last = traceback.extract_tb(exc.__traceback__)[-1]
        ray_tune.report({_VALUE: math.nan, "fit_seconds": math.nan,
                         "error": f"{type(exc).__name__}: {exc} ({Path(last.filename).name}:{last.lineno})"})
        return
    ray_tune.report({_VALUE: value, "fit_seconds": fit_seconds, "error": ""})


class _Space:
    """Define-by-run search space: the local backend's distributions (`tune._suggest`). A class, not a
    closure, because Tune pickles its searcher into its experiment checkpoints."""

    def __init__(self, space: dict[str, Any]) -> None:
        self.space = space

    def __call__(self, trial: Any) -> None:
        from recstack.experiment.tune import _suggest

        for name, dimension in self.space.items():
            _suggest(trial, name, dimension)


class StudySearch(OptunaSearch):
    """Ray's Optuna searcher, telling the study a failed trial as failed (with its error) and each
    trial's fit seconds, before the trial is closed. At module level: Tune pickles its searcher."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass  # one report per trial, at its end: nothing to prune on

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        trial = self._ot_trials.get(trial_id)
        if trial is not None and result:
            seconds = result.get("fit_seconds")
            if isinstance(seconds, (int, float)) and math.isfinite(seconds):
                trial.set_user_attr("fit_seconds", float(seconds))
            if result.get("error"):
                trial.set_user_attr("error", str(result["error"]))
                result, error = None, True
        elif trial is not None and error:
            trial.set_user_attr("error", "the trial's worker died on every attempt (Ray Tune restarted it "
                                         f"{TRIAL_RESTARTS} times); see {_LOGS}")
        super().on_trial_complete(trial_id, result, error)


def search_on_ray(study: Any, inputs: Any, n_trials: int, *, settings: RaySettings, tune_dir: Path,
                  say: Callable[[str], None] | None = None) -> None:
    """Run `n_trials` more trials of the Optuna `study` on Ray Tune; record each one's fit seconds and,
    for a trial that raised, its error as user attributes of the study's trial."""
    connect(settings)
    spec = inputs.config.tune
    before = {trial.number for trial in study.trials}

    searcher = StudySearch(space=_Space(spec.space), metric=_VALUE, mode="max", sampler=study.sampler,
                            study_name=study.study_name, storage=study._storage)
    tuner = ray_tune.Tuner(
        ray_tune.with_resources(ray_tune.with_parameters(_trial, inputs=inputs), {"cpu": 1}),
        tune_config=ray_tune.TuneConfig(search_alg=searcher, num_samples=n_trials,
                                        max_concurrent_trials=settings.workers, time_budget_s=spec.timeout_s),
        run_config=ray_tune.RunConfig(
            name=f"search-{time.strftime('%Y%m%dT%H%M%S')}-{len(before)}",
            storage_path=str((tune_dir / "ray").resolve()), verbose=0,
            failure_config=ray_tune.FailureConfig(max_failures=TRIAL_RESTARTS)),
    )
    tuner.fit()
    if say is not None:
        for trial in study.trials:
            if trial.number in before:
                continue
            error = trial.user_attrs.get("error")
            shown = f"failed: {error}" if error else f"{inputs.label} {trial.value:.4f}"
            say(f"trial {trial.number}: {shown}  {trial.params}")
