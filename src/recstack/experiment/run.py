"""The one top-to-bottom flow: config -> data -> preprocess -> split -> fit -> evaluate -> run directory.

A run directory holds `config.yaml` (the resolved config: every model parameter spelled out),
`manifest.json` (versions, data and split fingerprints and statistics, timings, peak memory),
`metrics.json` (with `best_epoch`, the restored epoch, for trained models), `per_user.parquet`
(long format, external user ids), `curves.json` (training curves of models that keep `history_`),
`models/<label>/` (each fitted model), `history.npz` (every event of the split with both
vocabularies and the item titles: `recommend` reads it instead of reloading the data) and
`report.md` / `report.html`. It is claimed first (a second run of the same name gets an error or
a fresh name, never the first run's folder), built in a temporary sibling and renamed into place
at the end, so a failed or interrupted run leaves nothing that looks complete. Everything that can
fail on the user's input (config, data, split, cut-offs) fails before any model trains. The file
names, writers and readers live in `rundir`; each model is fitted and scored by `steps`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import platform
import re
import resource
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np
from rich.markup import escape

from recstack.abilities import TrainedByEpochs
from recstack.data.dataset import Dataset
from recstack.errors import RecstackError, RecstackWarning
from recstack.evaluate.evaluator import ColdUsers, EvalResult, HistoryCounts, count_history, evaluate, rank
from recstack.experiment import rundir, seeds
from recstack.experiment.analysis import RunAnalysis
from recstack.experiment.config import ExperimentConfig, ModelEntry, load_config, parse_config
from recstack.experiment.report import write_report
from recstack.experiment.rundir import SHOWN_COLUMNS as _SHOWN_COLUMNS
from recstack.experiment.rundir import read_history as _read_history
from recstack.experiment.steps import Fitted, cold_users, fit_entry, history_names, ranker_for, scoring
from recstack.fs import CLAIM_FILE, check_writable, exclusive_directory
from recstack.split.base import Split

_VERSIONED = ("recstack", "numpy", "scipy", "pydantic", "pyarrow", "torch", "implicit")
# a part whose cold users (fewer than cold_users.min_history history events; by default none) are at
# least this share of its users with held-out events gets a warning line: the leaderboard then says as
# much about them as about the models
COLD_WARNING_SHARE = 0.10
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._+-]+")


@dataclass
class RunResult:
    """What a run produced: its directory, the metrics (as in metrics.json), the data and models."""

    run_dir: Path
    metrics: dict[str, dict[str, Any]]
    split: Split
    dataset: Dataset
    models: dict[str, Any]
    config: ExperimentConfig
    results: dict[str, dict[str, EvalResult]] = field(default_factory=dict)  # a multi-seed run: its first seed's
    seed_results: dict[int, dict[str, dict[str, EvalResult]]] = field(default_factory=dict)  # multi-seed: per seed


# ---- data ---------------------------------------------------------------------------------------

def load_data(config: ExperimentConfig) -> Dataset:
    """The configured source as a `Dataset` (pre-split files: all three parts together)."""
    source = config.data
    if source.dataset is not None:
        from recstack.data.datasets import load_dataset

        return load_dataset(source.dataset, cache_dir=config.cache_dir, kg=source.kg)
    if source.files is not None:
        return _files_dataset(config, _split_from_files(config))
    return _with_own_kg(config, _path_dataset(config))


def _path_dataset(config: ExperimentConfig) -> Dataset:
    source = config.data
    from recstack.data import load

    path = Path(source.path)  # type: ignore[arg-type]
    # a folder is RecBole's atomic files unless it holds Parquet parts (a partitioned table)
    fmt = source.format or ("atomic" if path.is_dir() and not any(path.glob("**/*.parquet")) else "table")
    if fmt == "movielens":
        dataset = load.load_movielens(path)
    elif fmt == "atomic":
        dataset = load.load_atomic(path, name=source.name)
    else:
        dataset = load.load_table(path, columns=source.columns, sep=source.sep, name=source.name)
    if source.name and dataset.provenance.get("name") != source.name:
        dataset = Dataset(dataset.interactions, dataset.item_table, dataset.user_table, dataset.kg,
                          {**dataset.provenance, "name": source.name})
    return dataset


def _split_from_files(config: ExperimentConfig) -> Split:
    from recstack.split import split_from_files

    files = config.data.files
    return split_from_files(files.train, files.valid, files.test,  # type: ignore[union-attr]
                            columns=config.data.columns, sep=config.data.sep, order=files.order)


def _files_dataset(config: ExperimentConfig, split: Split) -> Dataset:
    everything = split.train.concat(split.valid).concat(split.test)
    files = config.data.files
    source = {part: getattr(files, part) for part in ("train", "valid", "test")}
    return _with_own_kg(config, Dataset(everything, provenance={"name": config.data.label, "format": "files",
                                                                "source": source}))


def _with_own_kg(config: ExperimentConfig, dataset: Dataset) -> Dataset:
    """`dataset` with the graph of `data.kg_triples`/`kg_links` when given (its read report in the
    provenance, as `kg`), else unchanged."""
    source = config.data
    if source.kg_triples is None:
        return dataset
    from recstack.data.kg import read_kg_table, with_kg

    kg, report = read_kg_table(source.kg_triples, source.kg_links, dataset.interactions.items)
    dataset = with_kg(dataset, kg)
    return replace(dataset, provenance={**dataset.provenance, "kg": {"triples": source.kg_triples,
                                                                       "links": source.kg_links, **report}})


def prepare_data(config: ExperimentConfig) -> tuple[Dataset, Split]:
    """Load, preprocess and split as the config says; deterministic given the config and the files.

    A multi-seed run with `split_per_seed` gets its first seed's split here (`split_data` the others).
    """
    if config.data.files is not None:
        split = _split_from_files(config)
        dataset = _files_dataset(config, split)
        _check_split(config, dataset, split)
        return dataset, split
    from recstack.data.prep import preprocess

    dataset = load_data(config)
    p = config.preprocessing
    dataset = preprocess(dataset, threshold=p.threshold, dedup=p.dedup, user_core=p.user_core,
                         item_core=p.item_core)
    if len(dataset.interactions) == 0:
        raise RecstackError(
            f"no interactions left after preprocessing {dataset.name!r} (threshold={p.threshold}, "
            f"user_core={p.user_core}, item_core={p.item_core}); relax the filters")
    return dataset, split_data(config, dataset)


def split_data(config: ExperimentConfig, dataset: Dataset, seed: int | None = None) -> Split:
    """The preprocessed `dataset` split as the config says, drawn with `config.split_seed(seed)`."""
    from recstack.split import make_split

    split = make_split(dataset.interactions, config.split.method, seed=config.split_seed(seed),
                       **config.split.params)
    _check_split(config, dataset, split)
    return split


def _check_split(config: ExperimentConfig, dataset: Dataset, split: Split) -> None:
    if len(split.train) == 0:
        raise RecstackError(f"the training part of {dataset.name!r} is empty; check the split or the files")
    if len(split.test) == 0:
        raise RecstackError(f"the test part of {dataset.name!r} is empty; check the split or the files")
    depth = max(config.ks)
    if depth > split.train.n_items:
        raise RecstackError(f"k={depth} is larger than the catalogue of {dataset.name!r} ({split.train.n_items} "
                            f"items); choose cut-offs (ks) <= {split.train.n_items}")


# ---- the run ------------------------------------------------------------------------------------

def run_experiment(
    config: ExperimentConfig | dict[str, Any] | str | os.PathLike,
    *,
    run_dir: str | os.PathLike | None = None,
    progress: bool = True,
    console: Any = None,
) -> RunResult:
    """Run an experiment end to end and write its run directory; returns a `RunResult`.

    `config` is an `ExperimentConfig`, a mapping, or a path to a YAML/TOML file. The default
    run directory is `<output_dir>/<dataset>-<UTC time>-<fingerprint>`.
    """
    if isinstance(config, (str, os.PathLike)):
        config = load_config(config)
    from recstack.experiment.ctr import is_ctr, run_ctr_experiment

    if is_ctr(config):  # `task: ctr`: pointwise CTR models on labelled rows (docs/ctr.md)
        return run_ctr_experiment(config, run_dir=run_dir, progress=progress, console=console)  # type: ignore
    from recstack.experiment.llm import is_llm, run_llm_experiment

    if is_llm(config):  # `task: llm`: LLM rating prediction and reranking (docs/llm.md)
        return run_llm_experiment(config, run_dir=run_dir, progress=progress, console=console)  # type: ignore
    config = parse_config(config).resolved()
    _check_destination(config, run_dir)
    if config.ray is not None:  # an unreachable cluster is one line before any data is read
        from recstack.cluster import RaySettings, connect

        connect(RaySettings(config.ray.address, config.ray.workers))
    console, say = progress_printer(progress, console)

    started = datetime.now(timezone.utc)
    clock = time.perf_counter()
    say(f"[bold]recstack[/bold] loading data ({escape(config.data.label)}) ...")
    dataset, split = prepare_data(config)
    data_seconds = time.perf_counter() - clock
    summary = split.summary()
    say(f"  {len(dataset.interactions):,} interactions, {split.train.n_users:,} users, {split.train.n_items:,} "
        f"items; split {split.method} -> train {summary['train_events']:,} / valid {summary['valid_events']:,} / "
        f"test {summary['test_events']:,} ({data_seconds:.1f} s)")

    fingerprint = hashlib.sha1(
        (json.dumps(config.to_dict(), sort_keys=True) + split.fingerprint()).encode()).hexdigest()[:8]
    repetitions = _repetitions(config, dataset, split, say)  # one per seed; the first is `split`'s
    counts = repetitions[0].counts
    models: dict[str, Any] = {}
    results: dict[str, dict[str, EvalResult]] = {}
    metrics: dict[str, dict[str, Any]] = {}
    curves: dict[str, list[dict[str, Any]]] = {}
    timings: dict[str, dict[str, float]] = {}
    seed_results: dict[int, dict[str, dict[str, EvalResult]]] = {rep.seed: {} for rep in repetitions}

    writer = _claim_run_dir(config, dataset, started, fingerprint, run_dir)
    target = writer.path
    with writer as tmp:
        # the hidden name carries a random suffix: without it `tail -f` on a training log needs `ls -a`
        say(f"  writing to {escape(str(tmp))} (renamed to {escape(target.name)} when done; follow training with "
            f"tail -f {escape(str(tmp / rundir.LOGS))}/<label>.jsonl)")
        for position, entry in enumerate(config.models, start=1):
            label = entry.display
            named = f" ({entry.name})" if entry.name != label else ""
            records: dict[int, dict[str, Any]] = {}
            for rep in repetitions:
                # the first seed's model is saved as models/<label>/, as a single-seed run's
                name = label if rep is repetitions[0] else rundir.seed_label(label, rep.seed)
                seed_note = f" seed {rep.seed}" if config.is_multi_seed else ""
                say(f"[{position}/{len(config.models)}] [bold]{label}[/bold]{named}{seed_note} fitting ...")
                model, part_results, records[rep.seed], timings[name], curve = _fit_and_score(
                    config.for_seed(rep.seed), entry, dataset, rep, tmp, name, progress)
                if curve is not None:
                    curves[name] = curve
                seed_results[rep.seed][label] = part_results
                if rep is repetitions[0]:
                    models[label], results[label] = model, part_results
                say(f"      fit {records[rep.seed]['fit_seconds']:.1f} s, eval "
                    f"{sum(records[rep.seed]['eval_seconds'].values()):.1f} s; valid "
                    f"{config.valid_metric} {_fmt(part_results['valid'].metrics.get(config.valid_metric))}, test "
                    f"{config.valid_metric} {_fmt(part_results['test'].metrics.get(config.valid_metric))}")
            metrics[label] = seeds.aggregate(records) if config.is_multi_seed else records[repetitions[0].seed]

        finished = datetime.now(timezone.utc)
        manifest = {"run_name": target.name,
                    **_manifest(config, dataset, split, started, finished, data_seconds, timings, results, counts)}
        if config.is_multi_seed:
            manifest["seeds"] = {"seeds": config.run_seeds, "split_per_seed": config.split_per_seed,
                                 "split_fingerprints": {str(rep.seed): rep.split.fingerprint() for rep in repetitions}}
        rundir.write_yaml(tmp / rundir.CONFIG, config.to_dict())
        rundir.write_json(tmp / rundir.MANIFEST, manifest)
        rundir.write_json(tmp / rundir.METRICS, metrics)
        rundir.write_json(tmp / rundir.CURVES, curves)
        if config.is_multi_seed:
            rundir.write_per_user_seeds(tmp / rundir.PER_USER,
                                        [(rep.seed, seed_results[rep.seed], rep.split) for rep in repetitions])
        else:
            rundir.write_per_user(tmp / rundir.PER_USER, results, split)
        rundir.write_history(tmp / rundir.HISTORY, split, dataset)
        write_report(tmp)

    if progress:
        console.print(leaderboard_table(metrics, config))
        say(f"run directory: [bold]{escape(str(target))}[/bold]")
    return RunResult(target, metrics, split, dataset, models, config, results,
                     seed_results if config.is_multi_seed else {})


@dataclass
class _Repetition:
    """One seed of a run: its split (shared unless `split_per_seed`), cold-user policy, counts and analysis."""

    seed: int
    split: Split
    policy: ColdUsers
    counts: dict[str, HistoryCounts]
    analysis: RunAnalysis


def _repetitions(config: ExperimentConfig, dataset: Dataset, split: Split, say: Any) -> list[_Repetition]:
    """The run's repetitions, each split's policy fitted and its counts printed (and warned about) once."""
    out: list[_Repetition] = []
    for position, seed in enumerate(config.run_seeds):
        if position and not config.split_per_seed:
            out.append(_Repetition(seed, split, out[0].policy, out[0].counts, out[0].analysis))
            continue
        if position:
            split = split_data(config, dataset, seed)
            say(f"  split for seed {seed}: fingerprint {split.fingerprint()}")
        analysis = RunAnalysis(config, dataset, split)  # checks the slice columns before anything trains
        policy = cold_users(config, dataset, split)  # fits the fallback model once, when the policy has one
        analysis.cold_users = policy
        counts = history_counts(split, policy, config.test_history)
        for part, part_counts in counts.items():
            say(f"  {part}: {describe_counts(part_counts)}")
            warning = cold_warning(part, part_counts)
            if warning:
                warnings.warn(warning, RecstackWarning, stacklevel=3)
        out.append(_Repetition(seed, split, policy, counts, analysis))
    return out


def _fit_and_score(config: ExperimentConfig, entry: ModelEntry, dataset: Dataset, rep: _Repetition, tmp: Path,
                   name: str, progress: bool) -> tuple[Any, dict[str, EvalResult], dict[str, Any], dict[str, float],
                                                       list[dict[str, Any]] | None]:
    """Fit one entry on one repetition, score it, save it as models/<name>/: the model, its results, its
    metrics.json record, its manifest timings and its training curve (None without one)."""
    fitted = fit_entry(config, entry, dataset, rep.split, log=rundir.log_path(tmp, name), progress=progress,
                       cold_users=rep.policy)
    model = fitted.model
    part_results, eval_seconds = _score(model, config, rep.split, rep.policy)
    peak_mb = _peak_rss_mb()
    model.save(rundir.model_dir(tmp, name))  # every Recommender saves
    record, timings = _model_record(entry, fitted, part_results, eval_seconds, peak_mb)
    tick = time.perf_counter()
    record.update(rep.analysis.for_model(model, part_results["test"]))
    timings["analysis_seconds"] = time.perf_counter() - tick
    curve = None
    if isinstance(model, TrainedByEpochs) and model.history_:
        curve = [dict(epoch) for epoch in model.history_]
        # the epoch whose weights the fitted model keeps (best validation epoch, restored)
        record["best_epoch"] = int(model.best_epoch_)
    return model, part_results, record, timings, curve


def _score(model: Any, config: ExperimentConfig, split: Split, policy: ColdUsers
           ) -> tuple[dict[str, EvalResult], dict[str, float]]:
    """Valid and test figures of a fitted model, and the seconds each took."""
    results: dict[str, EvalResult] = {}
    seconds: dict[str, float] = {}
    for part in ("valid", "test"):
        # keep the test top-k lists for `beyond`
        plan = scoring(config, split, part, keep_rankings=part == "test", cold_users=policy)
        tick = time.perf_counter()
        results[part] = evaluate(model, plan.history, plan.truth, **plan.options, ranker=ranker_for(config))
        seconds[part] = time.perf_counter() - tick
    return results, seconds


def _model_record(entry: ModelEntry, fitted: Fitted, parts: dict[str, EvalResult], eval_seconds: dict[str, float],
                  peak_mb: float) -> tuple[dict[str, Any], dict[str, float]]:
    """One model's metrics.json record (before the analysis adds to it) and its manifest timings."""
    record = {
        "model": entry.name,
        "valid": parts["valid"].metrics,
        "test": parts["test"].metrics,
        "fit_seconds": fitted.fit_seconds,
        "eval_seconds": eval_seconds,
        "n_users": {p: int(len(r.users)) for p, r in parts.items()},
        "n_skipped_users": {p: r.n_skipped_users for p, r in parts.items()},
        # the evaluated users this model says it cannot score (`can_score`); the policy decided their lists
        "n_unscorable_users": {p: r.history_counts.n_unscorable for p, r in parts.items() if r.history_counts},
    }
    timings = {"fit_seconds": fitted.fit_seconds, **{f"eval_{p}_seconds": s for p, s in eval_seconds.items()},
               "peak_rss_mb": peak_mb}
    return record, timings


def history_counts(split: Split, policy: ColdUsers, test_history: str = "train_valid") -> dict[str, HistoryCounts]:
    """Per part, the evaluated users (those with held-out events) by the length of the history they
    are ranked with (`test_history` for test), and what the policy does with the cold ones: the counts
    every model's evaluation of the part carries too."""
    out = {}
    for part in ("valid", "test"):
        truth = getattr(split, part)
        users = np.flatnonzero(truth.user_counts() > 0).astype(np.int32)
        out[part] = count_history(split.history(part, test_history), users, policy)
    return out


def _share(count: int, counts: HistoryCounts) -> str:
    return f"{count:,} ({counts.share(count):.1%})"


def _cold_words(counts: HistoryCounts) -> str:
    return "no history" if counts.min_history == 1 else f"fewer than {counts.min_history} history events"


def describe_counts(counts: HistoryCounts) -> str:
    """One console line: evaluated users, how many have no or little history, what the policy did."""
    text = (f"{counts.n_users:,} users with held-out events, {_share(counts.n_no_history, counts)} with no "
            f"history, {_share(counts.n_few_history, counts)} with fewer than {counts.few_history} history events "
            f"(none included); cold-user policy {counts.policy}")
    if counts.policy == "skip":
        text += (f": {_share(counts.n_skipped, counts)} with {_cold_words(counts)} skipped, "
                 f"{counts.n_users - counts.n_skipped:,} evaluated")
    elif counts.policy == "fallback":
        text += f": {_share(counts.n_fallback, counts)} with {_cold_words(counts)} ranked by {counts.fallback}"
    return text


def cold_warning(part: str, counts: HistoryCounts) -> str | None:
    """A warning when the cold users are a sizable share of a part's evaluated users, else None."""
    if counts.n_users == 0 or counts.share(counts.n_cold) < COLD_WARNING_SHARE:
        return None
    head = (f"{counts.n_cold:,} of the {counts.n_users:,} {part} users with held-out events "
            f"({counts.share(counts.n_cold):.0%}) have {_cold_words(counts)} (a global time cut does this: they "
            "first appear after it); ")
    if counts.policy == "include":
        return head + ("every model ranks them from an empty history, which rewards popularity rather than the "
                       "model; state a policy: cold_users: {policy: skip} or {policy: fallback, fallback: pop}")
    if counts.policy == "skip":
        return head + "the cold-user policy skip leaves them out of every metric"
    return head + f"the cold-user policy fallback gives every model {counts.fallback}'s lists for them"


def progress_printer(progress: bool, console: Any = None) -> tuple[Any, Callable[[str], None]]:
    """The console a run prints to (a new rich `Console` when progress is on and none was given) and
    `say(text)`, which prints to it only with progress on."""
    if progress and console is None:
        from rich.console import Console

        console = Console()

    def say(text: str) -> None:
        if progress:
            console.print(text, soft_wrap=True)

    return console, say


def _check_destination(config: ExperimentConfig, run_dir: str | os.PathLike | None) -> None:
    """Devices and the destination, checked before the data is read: not a failure after hours of training."""
    config.check_devices()
    if run_dir is not None:
        target = Path(run_dir)
        if target.exists() and (not target.is_dir() or any(p.name != CLAIM_FILE for p in target.iterdir())):
            raise RecstackError(f"run directory {str(target)!r} already exists; choose another or remove it")
    try:
        check_writable(Path(run_dir).parent if run_dir is not None else config.output_dir)
    except OSError as exc:
        raise RecstackError(_cannot_write(config, run_dir, exc)) from None


def _cannot_write(config: ExperimentConfig, run_dir: str | os.PathLike | None, exc: OSError) -> str:
    what = f"run directory {str(run_dir)!r}" if run_dir is not None else f"output_dir {config.output_dir!r}"
    reason = f"{exc.strerror.lower()}: {exc.filename!r}" if exc.strerror and exc.filename else str(exc)
    return f"{what} cannot be written ({reason}); choose a writable folder"


def _claim_run_dir(config: ExperimentConfig, dataset: Dataset, started: datetime, fingerprint: str,
                   run_dir: str | os.PathLike | None) -> exclusive_directory:
    """The run directory, claimed: an explicit one that exists or is being written is an error; an
    automatic name another run took (the same config in the same second) gets a suffix."""
    if run_dir is not None:
        candidates = [Path(run_dir)]
    else:
        name = _SAFE_NAME.sub("_", dataset.name or config.data.label).strip("._") or "data"
        base = Path(config.output_dir) / f"{name}-{started:%Y%m%dT%H%M%SZ}-{fingerprint}"
        candidates = [base, *(base.with_name(f"{base.name}-{n}") for n in range(2, 1000))]
    for target in candidates:
        writer = exclusive_directory(target)
        try:
            writer.claim()
            return writer
        except FileExistsError as exc:
            if run_dir is not None:
                raise RecstackError(f"run directory {str(target)!r} {exc.strerror}; choose another or remove it") \
                    from None
        except OSError as exc:
            raise RecstackError(_cannot_write(config, run_dir, exc)) from None
    raise RecstackError(f"{len(candidates)} run directories named {candidates[0].name!r}[-n] already exist in "
                        f"{config.output_dir!r}; remove some")


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in _VERSIONED:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _manifest(config: ExperimentConfig, dataset: Dataset, split: Split, started: datetime, finished: datetime,
              data_seconds: float, timings: dict[str, dict[str, float]],
              results: dict[str, dict[str, EvalResult]], counts: dict[str, HistoryCounts]) -> dict[str, Any]:
    from recstack.data.prep import summarize

    protocol = next(iter(results.values()))["test"].protocol if results else {}
    return {
        "recstack_run": 1,
        "versions": _versions(),
        "platform": {"system": platform.system(), "machine": platform.machine(),
                     "cpu_count": os.cpu_count()},  # no hostname: run directories get shared
        "seed": config.seed,
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "total_seconds": (finished - started).total_seconds(),
        "data_seconds": data_seconds,
        "dataset": {
            "name": dataset.name,
            "provenance": dataset.provenance,
            "fingerprint": dataset.interactions.fingerprint(),
            "stats": summarize(dataset.interactions),
            "has_item_table": sorted(dataset.item_table),
        },
        "preprocessing": config.preprocessing.model_dump(mode="json"),
        "split": {**split.summary(), "n_users": split.train.n_users, "n_items": split.train.n_items},
        "protocol": {
            "ranking": protocol.get("ranking", "full"),
            "mask_history": protocol.get("mask_history", True),
            "graded": protocol.get("graded", False),
            "score_precision": config.score_precision,
            # the events each part's users are ranked with (config `test_history`), and those masked at test
            **history_names(config, split),
            "metrics": config.metric_labels,
            "valid_metric": config.valid_metric,
            "beyond": config.beyond,
            "slices": config.slices.model_dump(mode="json"),
            "sampled": None if config.sampled is None else config.sampled.model_dump(mode="json"),
            # the same for every model: the counts depend on the split only, the policy on the config
            "cold_users": {**config.cold_users.model_dump(mode="json"),
                           **{part: part_counts.to_dict() for part, part_counts in counts.items()}},
        },
        # where the evaluation ran (not part of the protocol: Ray tasks give the local figures)
        "execution": {"evaluation": "local"} if config.ray is None else {
            "evaluation": "ray", "address": config.ray.address or "local instance", "workers": config.ray.workers},
        "timings": timings,
        "peak_rss_mb": _peak_rss_mb(),
    }


# ---- console output -----------------------------------------------------------------------------

def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def leaderboard_table(metrics: dict[str, dict[str, Any]], config: ExperimentConfig):
    """A rich table of the run, sorted by test NDCG@k (k = 10 when computed, else the smallest k); a
    multi-seed run's shows mean ± sd and the interval over seeds with the overlap mark, then a table of
    the per-seed values (MRR, Hit and Coverage are left to the report to keep it narrow)."""
    from rich.console import Group
    from rich.table import Table

    from recstack.experiment.report import leaderboard

    board = leaderboard(metrics, config.ks, config.valid_metric)
    table = Table(title=f"leaderboard ({board.title})")
    keep = [i for i, column in enumerate(board.columns)
            if board.seeds is None or not column.startswith(("MRR", "Hit", "Coverage")) and "per seed" not in column]
    for i in keep:
        table.add_column(board.columns[i], justify="left" if board.columns[i] == "model" else "right")
    for row in board.rows:
        table.add_row(*[escape(row[i]) if isinstance(row[i], str) else _fmt(row[i], 1 if board.columns[i] == "fit s"
                                                                               else 4) for i in keep])
    if board.seeds is None:
        return table
    per_seed = Table(title=f"test {board.sort_label} per seed")
    per_seed.add_column("model")
    for seed in board.seeds:
        per_seed.add_column(str(seed), justify="right")
    for row in board.rows:
        values = dict(seeds.per_seed_values(metrics[row[0]], "test", board.sort_label))
        per_seed.add_row(row[0], *[_fmt(values.get(seed)) for seed in board.seeds])
    return Group(table, per_seed)


# ---- reading a run back ------------------------------------------------------------------------

@dataclass
class LoadedRun:
    """A run directory read back: its config and manifest, and its data and split rebuilt."""

    run_dir: Path
    config: ExperimentConfig
    manifest: dict[str, Any]
    dataset: Dataset
    split: Split
    trust: bool = False  # import model classes outside the registry (only for runs the user trusts)

    @property
    def labels(self) -> list[str]:
        return [entry.display for entry in self.config.models]

    def model(self, label: str):
        """The saved model `label` (loaded from models/<label>/; `<label>@seed<s>`: a further seed's)."""
        return _saved_model(self.run_dir, self.labels, label, self.trust)


def _saved_model(run_dir: Path, labels: list[str], label: str, trust: bool = False):
    from recstack.models import load_model

    path = rundir.model_dir(run_dir, label)
    # `<label>@seed<s>`: a multi-seed run's model of a further seed
    if rundir.split_seed_label(label)[0] not in labels or not (path / rundir.SAVED_MODEL).is_file():
        saved = rundir.saved_models(run_dir)
        close = difflib.get_close_matches(label, saved, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RecstackError(f"run {run_dir.name!r} has no saved model {label!r}.{hint} "
                            f"Saved models: {', '.join(saved) or 'none'}")
    return load_model(path, trust=trust)


def _read_run(run_dir: Path, trust: bool = False) -> tuple[ExperimentConfig, dict[str, Any]]:
    rundir.require(run_dir, (rundir.MANIFEST, rundir.CONFIG), "give a folder that `recstack run` wrote")
    config = load_config(run_dir / rundir.CONFIG, trust=trust)
    return config, rundir.read_manifest(run_dir)


def load_run(run_dir: str | os.PathLike, *, trust: bool = False) -> LoadedRun:
    """Read a run directory and rebuild its data and split, checking the split fingerprint.

    A run directory may come from someone else, so a model class outside the registry (in
    config.yaml or a model.json) is refused before it is imported unless `trust=True`.
    """
    run_dir = Path(run_dir)
    config, manifest = _read_run(run_dir, trust)
    dataset, split = prepare_data(config)
    expected = manifest.get("split", {}).get("fingerprint")
    if expected and split.fingerprint() != expected:
        raise RecstackError(f"the data of run {run_dir.name!r} no longer gives the same split (fingerprint "
                            f"{split.fingerprint()}, the run had {expected}): its source files changed")
    return LoadedRun(run_dir, config, manifest, dataset, split, trust)


def recommend(run: LoadedRun | str | os.PathLike, label: str, user_id: Any, k: int = 10, *,
              include_seen: bool = False, trust: bool = False) -> list[dict[str, Any]]:
    """Top-k for one raw user id by the run's model `label`, seeing everything the user rated.

    The history is `split.history("test")` plus the user's test events, so nothing the user
    already has is recommended unless `include_seen`. A run directory is read from its
    `history.npz` (runs written without one are rebuilt from their source), and k and the user
    are checked before any model loads. Rows: rank, item_id, score, and title/year/genres where
    known; fewer than k when fewer items can be scored. A user with nothing left to recommend
    raises a `RecstackError` that says so. `trust` as in `load_run`.
    """
    if k < 1:
        raise RecstackError(f"k must be >= 1, got {k}")
    saved = None
    if not isinstance(run, LoadedRun):
        run_dir = Path(run)
        config, manifest = _read_run(run_dir, trust)
        _check_k(k, manifest.get("split", {}).get("n_items"), run_dir)
        saved = _read_history(run_dir / rundir.HISTORY)
        if saved is None:
            run = load_run(run_dir, trust=trust)  # written before history.npz: reload the data and rebuild the split
    if saved is None:
        run_dir, labels = run.run_dir, run.labels
        everything, table = run.split.history("test").concat(run.split.test), run.dataset.item_table
    else:
        labels = [entry.display for entry in config.models]
        everything, table = saved
    _check_k(k, everything.n_items, run_dir)
    user_idx = everything.users.index(user_id)
    n_seen = len(np.unique(everything.item[everything.indptr[user_idx]:everything.indptr[user_idx + 1]]))
    if n_seen == everything.n_items and not include_seen:
        raise RecstackError(f"user {user_id!r} has interacted with all {n_seen} items of run {run_dir.name!r}; "
                            "nothing is left to recommend (--include-seen, or include_seen=True, ranks them too)")
    model = run.model(label) if isinstance(run, LoadedRun) else _saved_model(run_dir, labels, label, trust)
    items, scores = rank(model, np.array([user_idx], dtype=np.int32), everything, k, mask_history=not include_seen)
    rows = []
    for position, (item_idx, score) in enumerate(zip(items[0], scores[0]), start=1):
        if item_idx < 0:
            break  # fewer than k items can be scored for this user
        row: dict[str, Any] = {"rank": position, "item_id": _plain(everything.items.id_of(int(item_idx))),
                               "score": float(score)}
        for column in _SHOWN_COLUMNS:
            if column in table:
                row[column] = _plain(table[column][item_idx])
        rows.append(row)
    if not rows:
        unseen = everything.n_items - (0 if include_seen else n_seen)
        raise RecstackError(f"model {label!r} can score none of the {unseen} {'' if include_seen else 'unseen '}"
                            f"items for user {user_id!r}; nothing to recommend")
    return rows


def _check_k(k: int, n_items: int | None, run_dir: Path) -> None:
    if n_items is not None and k > n_items:
        raise RecstackError(f"k={k} is larger than the catalogue of run {run_dir.name!r} ({n_items} items); "
                            f"choose k <= {n_items}")


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
