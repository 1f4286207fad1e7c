"""`compare_runs(run_dirs)`: significance tests between the models of one or more run directories.

Reads each run's `manifest.json` and `per_user.parquet` (nothing is refitted or re-scored) and
hands the per-user values to `recstack.evaluate.stats.compare_models`. Per-user values
pair up only when the runs evaluated the same users on the same held-out items, so runs whose
split fingerprints (or evaluation protocols: `Protocol`) differ are refused with the reason.
`Protocol` is also what the peer benchmarks check before they print a ratio against another
library. A model name that appears in more than one run is prefixed with its run name
(`<run>/<model>`). CTR runs are compared on the test predictions they keep (DeLong on AUC, paired
tests of per-user AUC or per-row LogLoss: `recstack.experiment.compare_ctr`), when their rows match.
The result renders as a rich table or as markdown, both with the same legend.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from recstack.errors import RecstackError
from recstack.evaluate.stats import CORRECTION_NAMES, Comparison, compare_models
from recstack.experiment import rundir
from recstack.experiment import seeds as S


@dataclass(frozen=True)
class Protocol:
    """What an accuracy figure was measured under, beyond the split: two runs' per-user values (or a
    figure and a peer library's) compare only when every field is equal. Values read as the run
    manifest's `protocol` states them; runs written before a field existed get today's default.
    """

    ranking: str = "full"  # the candidates: full (every item) | item_pool (a cold-item split's pools)
    mask_history: bool = True  # items already in the history left out of the lists
    test_history: str = "train + valid"  # the events test users are ranked with (config `test_history`)
    test_masked: str = "train + valid"  # the events whose items test lists leave out ("none" unmasked)
    cold_users: str = "include (min_history 1)"  # the cold-user policy
    graded: bool = False  # graded NDCG gains
    score_precision: str = "fp32"  # bf16: dot-product models ranked from bfloat16 products

    @classmethod
    def from_manifest(cls, protocol: dict[str, Any]) -> "Protocol":
        mask = bool(protocol.get("mask_history", True))
        test_history = protocol.get("test_history", cls.test_history)
        masked = protocol.get("test_masked", test_history if mask else "none")  # before test_masked: the history
        return cls(protocol.get("ranking", "full"), mask, test_history, masked, _cold_user_policy(protocol),
                   bool(protocol.get("graded", False)), protocol.get("score_precision", "fp32"))

    @classmethod
    def of_config(cls, config: Any, split: Any) -> "Protocol":
        """The protocol `recstack run` records for `config` (an `ExperimentConfig`) on `split`."""
        from recstack.experiment.steps import history_names

        names = history_names(config, split)
        return cls("full" if split.item_pool("test") is None else "item_pool", config.mask_history,
                   names["test_history"], names["test_masked"],
                   _cold_user_policy({"cold_users": config.cold_users.model_dump(mode="json")}),
                   score_precision=config.score_precision)

    @classmethod
    def of_run(cls, run_dir: str | os.PathLike) -> "Protocol":
        """The protocol a `recstack run` directory's figures were made under."""
        return cls.from_manifest(rundir.read_manifest(Path(run_dir)).get("protocol", {}))

    def difference(self, other: "Protocol", part: str = "test") -> tuple[str, Any, Any] | None:
        """The first setting that differs (name, this value, the other's), or None. For `part` valid the
        test-only settings are left out: they change no validation figure."""
        for setting in fields(self):
            if part == "valid" and setting.name in ("test_history", "test_masked"):
                continue
            mine, theirs = getattr(self, setting.name), getattr(other, setting.name)
            if mine != theirs:
                return setting.name, mine, theirs
        return None

    def describe(self) -> str:
        """One line: `ranking full, mask_history on, test_history train + valid, ...`."""
        def shown(value: Any) -> str:
            return ("on" if value else "off") if isinstance(value, bool) else str(value)

        return ", ".join(f"{setting.name} {shown(getattr(self, setting.name))}" for setting in fields(self))


def require_same_protocol(what: str, first: tuple[str, Protocol], second: tuple[str, Protocol],
                          part: str = "test") -> None:
    """Raise one line naming the differing setting and both values when `first` and `second` (each a
    name and its `Protocol`) were measured differently; `what` says what is refused ("a ratio")."""
    (first_name, first_protocol), (second_name, second_protocol) = first, second
    differ = first_protocol.difference(second_protocol, part)
    if differ is not None:
        name, mine, theirs = differ
        raise RecstackError(f"not printing {what}: {first_name} and {second_name} were measured under different "
                            f"protocols ({name} = {mine!r} vs {theirs!r})")


@dataclass
class RunInfo:
    """One run directory given to `compare_runs`."""

    name: str
    run_dir: Path
    fingerprint: str
    models: list[str]


@dataclass
class RunComparison:
    """`Comparison` of the merged models plus the runs they came from."""

    comparison: Comparison
    runs: list[RunInfo]
    part: str
    labels: dict[str, tuple[str, str]]  # shown label -> (run name, model label in that run)
    unit: str = "users"  # what the paired values are of: users (CTR runs: rows for AUC and LogLoss)
    fingerprint_kind: str = "split"  # CTR runs pair on their rows fingerprint
    notes: list[str] = field(default_factory=list)  # legend lines: what the figures mean where a run's table differs

    @property
    def fingerprint(self) -> str:
        return self.runs[0].fingerprint

    def legend(self) -> list[str]:
        """The lines printed under the table: marker meaning, what was tested, the runs."""
        c = self.comparison
        n = len(c.rows) - 1
        adjusted = (f"{CORRECTION_NAMES[c.correction]}-adjusted p" if c.correction else "p (no correction)")
        runs = ", ".join(f"{run.name} ({len(run.models)} models)" for run in self.runs)
        return [
            f"* = {adjusted} < {c.alpha:g} against the baseline (B); {n} comparison{'s' * (n != 1)}",
            c.description,
            ("diff = AUC(model) - AUC(baseline)" if c.test == "delong" else
             f"diff = mean over paired {self.unit} of (model - baseline)")
            + f"; part {self.part!r}; {'higher' if c.higher_is_better else 'lower'} is better",
            f"runs: {runs}; {self.fingerprint_kind} fingerprint {self.fingerprint}",
            *self.notes,
        ]

    def _cells(self) -> tuple[list[str], list[list[str]]]:
        c = self.comparison
        pct = f"{c.confidence:.0%}"
        adjusted = f"p ({c.correction})" if c.correction else "p (uncorrected)"
        headers = ["model", self.unit, c.metric, f"{pct} CI", "diff", f"diff {pct} CI", c.effect_name, "p",
                   adjusted, "sig"]
        rows = []
        for row in c.rows:
            cells = [row.model + (" (B)" if row.is_baseline else ""), f"{row.n_users:,}", _num(row.mean),
                     _interval(row.ci_low, row.ci_high)]
            if row.is_baseline:
                cells += ["", "", "", "", "", ""]
            else:
                cells += [_num(row.diff, signed=True), _interval(row.diff_ci_low, row.diff_ci_high, signed=True),
                          _num(row.effect_size, digits=3, signed=True), _p(row.p), _p(row.p_adjusted),
                          "*" if row.significant else ""]
            rows.append(cells)
        return headers, rows

    def table(self):
        """A rich `Table` with the legend as its caption."""
        from rich.table import Table
        from rich.text import Text

        headers, rows = self._cells()
        c = self.comparison
        table = Table(title=f"{c.metric} ({self.part}): every model against {c.baseline}",
                      caption="\n".join(self.legend()), caption_justify="left")
        for header in headers:
            table.add_column(header, justify="left" if header in ("model", "sig") else "right")
        for row, cells in zip(c.rows, rows):
            style = "bold" if row.is_baseline else ("green" if row.significant else None)
            table.add_row(*[Text(cell) for cell in cells], style=style)  # Text: names are never markup
        return table

    def to_markdown(self) -> str:
        """A markdown table with the legend under it."""
        headers, rows = self._cells()
        c = self.comparison

        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

        align = ["---" if h in ("model", "sig") else "---:" for h in headers]
        out = [f"### {c.metric} ({self.part}): every model against {c.baseline}", "",
               line(headers), "| " + " | ".join(align) + " |", *[line(r) for r in rows], ""]
        out += [f"{text}  " for text in self.legend()]
        return "\n".join(out).rstrip() + "\n"


def _num(value: float | None, digits: int = 4, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return f"{value:{'+' if signed else ''}.{digits}f}"


def _interval(low: float | None, high: float | None, signed: bool = False) -> str:
    if low is None or high is None or math.isnan(low):
        return "-"
    return f"[{_num(low, signed=signed)}, {_num(high, signed=signed)}]"


def _p(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.4f}" if value >= 1e-3 else f"{value:.1e}"


def _read_manifest(run_dir: Path) -> dict[str, Any]:
    rundir.require(run_dir, (rundir.MANIFEST,), "give folders that `recstack run` wrote")
    return rundir.read_manifest(run_dir)


def _read_run(run_dir: Path, manifest: dict[str, Any]) -> tuple[dict[str, Any], Path]:
    rundir.require(run_dir, (rundir.MANIFEST, rundir.PER_USER), "give folders that `recstack run` wrote")
    values_path = run_dir / rundir.PER_USER
    if not manifest.get("split", {}).get("fingerprint"):
        raise RecstackError(f"run {run_dir.name!r} records no split fingerprint in manifest.json, so it cannot "
                            "be paired with other runs; rerun it with this version of recstack")
    return manifest, values_path


# the config key behind each protocol field
_SETTING = {"ranking": "split (item pool)", "test_masked": "mask_history / test_history"}


def _cold_user_policy(protocol: dict[str, Any]) -> str:
    """The cold-user policy a run's per-user values were made under (runs written before it: include)."""
    cold = protocol.get("cold_users") or {}
    policy, min_history = cold.get("policy", "include"), cold.get("min_history", 1)
    return f"{policy} (min_history {min_history}" + (f", fallback {cold.get('fallback')}" if policy == "fallback"
                                                     else "") + ")"


def _check_same_split(runs: list[RunInfo], protocols: list[dict[str, Any]], part: str = "test") -> None:
    first = runs[0]
    for run, protocol in zip(runs[1:], protocols[1:]):
        if run.fingerprint != first.fingerprint:
            raise RecstackError(
                f"cannot compare run {first.name!r} (split fingerprint {first.fingerprint}) with run "
                f"{run.name!r} (split fingerprint {run.fingerprint}): they were evaluated on different splits, "
                "and paired tests need the same users with the same held-out items in every run. Compare runs "
                "made with the same data, preprocessing, split and seed, or compare within one run")
        differ = Protocol.from_manifest(protocols[0]).difference(Protocol.from_manifest(protocol), part)
        if differ is not None:
            key, mine, theirs = differ
            raise RecstackError(
                f"cannot compare run {first.name!r} with run {run.name!r}: their evaluation protocols differ "
                f"({key} = {mine!r} vs {theirs!r}), so their per-user values measure different things; rerun one "
                f"with the other's {_SETTING.get(key, key)} setting")


def compare_runs(
    run_dirs: Sequence[str | os.PathLike] | str | os.PathLike,
    metric: str | None = None,
    *,
    baseline: str | None = None,
    test: str = "t",
    correction: str | None = "holm",
    alpha: float = 0.05,
    part: str = "test",
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    n_bootstrap: int = 2_000,
    seed: int = 0,
) -> RunComparison | SeedsComparison:
    """Test every model of the given runs against the best one (or `baseline`) on `metric`.

    `metric` defaults to the first run's validation metric (NDCG@10 by default). Runs must share
    their split fingerprint; the other arguments are those of `compare_models`. Multi-seed runs
    (which must share their seeds) give a `SeedsComparison`: the test over seeds next to the
    per-user tests of each seed.
    """
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    paths = [Path(p) for p in run_dirs]
    if not paths:
        raise RecstackError("give at least one run directory to compare")
    seen: dict[Path, Path] = {}
    for path in paths:
        key = path.resolve()
        if key in seen:
            raise RecstackError(f"run directory {str(path)!r} is given twice; give each run once")
        seen[key] = path
    if part not in ("test", "valid"):
        raise RecstackError(f"part must be 'test' or 'valid', got {part!r}")

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    read = [_read_manifest(path) for path in paths]
    is_ctr = [manifest.get("task") == "ctr" for manifest in read]
    if any(is_ctr):
        if not all(is_ctr):
            ctr_run, other = paths[is_ctr.index(True)], paths[is_ctr.index(False)]
            raise RecstackError(f"cannot compare CTR run {ctr_run.name!r} with ranking run {other.name!r}: one "
                                "predicts labelled rows, the other ranks the catalogue; compare runs of one task")
        return _compare_ctr_runs(paths, read, metric, baseline=baseline, test=test, correction=correction,
                                 alpha=alpha, part=part, confidence=confidence, n_resamples=n_resamples,
                                 n_bootstrap=n_bootstrap, seed=seed)
    runs: list[RunInfo] = []
    protocols: list[dict[str, Any]] = []
    manifests: list[dict[str, Any]] = []
    tables = []
    for path, manifest in zip(paths, read):
        manifest, values_path = _read_run(path, manifest)
        name = manifest.get("run_name") or path.name
        if metric is None:
            metric = manifest.get("protocol", {}).get("valid_metric") or "NDCG@10"
        table = pq.read_table(values_path)
        table = table.filter(pc.and_(pc.equal(table["part"], part), pc.equal(table["metric"], metric)))
        models = list(dict.fromkeys(table["model"].to_pylist()))
        if not models:
            computed = sorted(set(pq.read_table(values_path, columns=["metric"])["metric"].to_pylist()))
            raise RecstackError(f"run {name!r} has no per-user {metric} values on {part!r}; "
                                f"it has: {', '.join(computed) or 'none'}")
        runs.append(RunInfo(name, path, manifest["split"]["fingerprint"], models))
        protocols.append(manifest.get("protocol", {}))
        manifests.append(manifest)
        tables.append(table)
    if len({run.name for run in runs}) < len(runs):  # same name in different folders: use the paths
        for run in runs:
            run.name = str(run.run_dir)
    seeds = _check_same_seeds(runs, manifests)
    _check_same_split(runs, protocols, part)
    merged, labels = _merge(runs, tables, with_seed=seeds is not None)
    if baseline is not None and baseline not in labels:
        doubled = [f"{run.name}/{baseline}" for run in runs if baseline in run.models]
        if len(doubled) > 1:
            raise RecstackError(f"baseline {baseline!r} is in more than one run; name one of {', '.join(doubled)}")
    options = dict(test=test, correction=correction, alpha=alpha, confidence=confidence, n_resamples=n_resamples,
                   n_bootstrap=n_bootstrap, seed=seed)
    if seeds is not None:
        return compare_over_seeds(merged, metric, seeds, baseline, runs=runs, part=part, labels=labels,
                                  **options)  # type: ignore[arg-type]
    comparison = compare_models(merged, metric, baseline, part=None, **options)  # type: ignore[arg-type]
    return RunComparison(comparison, runs, part, labels)


def _compare_ctr_runs(paths: list[Path], manifests: list[dict[str, Any]], metric: str | None, *,
                      baseline: str | None, test: str, correction: str | None, alpha: float, part: str,
                      confidence: float, n_resamples: int, n_bootstrap: int, seed: int) -> RunComparison:
    """CTR runs: DeLong on AUC, or the paired test of per-user AUC (gAUC) or per-row LogLoss, over the
    test predictions the runs kept (`recstack.experiment.compare_ctr`)."""
    from recstack.experiment import compare_ctr as C

    metric = metric or "AUC"
    if metric not in C.CTR_METRICS:
        raise RecstackError(f"CTR runs are compared on {', '.join(C.CTR_METRICS)}, not {metric!r}")
    if part != "test":
        raise RecstackError("CTR runs keep their test predictions only: compare them with --part test")
    runs = [C.read_predictions(path, manifest, manifest.get("run_name") or path.name)
            for path, manifest in zip(paths, manifests)]
    if len({run.name for run in runs}) < len(runs):
        for run in runs:
            run.name = str(run.run_dir)
    C.check_same_rows(runs)
    predictions, labels = C.merged(runs)
    if len(predictions) < 2:
        raise RecstackError(f"comparing needs at least two models; the runs hold {', '.join(predictions)}")
    if baseline is not None and baseline not in predictions:
        doubled = [f"{run.name}/{baseline}" for run in runs if baseline in run.p]
        hint = (f"it is in more than one run; name one of {', '.join(doubled)}" if len(doubled) > 1
                else f"the models are {', '.join(predictions)}")
        raise RecstackError(f"baseline {baseline!r} is not a model of these runs: {hint}")
    infos = [RunInfo(run.name, run.run_dir, run.rows_fingerprint, list(run.p)) for run in runs]
    first = runs[0]
    # a multi-seed CTR run keeps the predictions of its first (analysis) seed's models, as its own tests use
    seeded = [f"{run.name}: seed {manifest['seeds']['analysis_seed']}" for run, manifest in zip(runs, manifests)
              if manifest.get("seeds")]
    seeds_note = f"multi-seed runs are compared on their first seed's models ({'; '.join(seeded)})" if seeded else None
    if metric == "AUC":
        comparison = C.delong_comparison(first.label, predictions, baseline, correction=correction, alpha=alpha,
                                         confidence=confidence)
        return RunComparison(comparison, infos, part, labels, unit="rows", fingerprint_kind="rows",
                             notes=[seeds_note] if seeds_note else [])
    values = C.paired_values(metric, first.label, first.user, predictions)
    comparison = compare_models(values, metric, baseline, part=None, test=test, correction=correction,  # type: ignore[arg-type]
                                alpha=alpha, confidence=confidence, n_resamples=n_resamples,
                                n_bootstrap=n_bootstrap, seed=seed)
    if metric == "LogLoss":
        comparison.unit = "row"
    notes = [seeds_note] if seeds_note else []
    if metric == "gAUC":
        notes.append("gAUC here: the mean of the per-user AUCs, each user once, over users with rows of both labels "
                     "(the run's leaderboard weighs each user by their rows)")

    return RunComparison(comparison, infos, part, labels, unit="users" if metric == "gAUC" else "rows",
                         fingerprint_kind="rows", notes=notes)


def _merge(runs: list[RunInfo], tables: list[Any], with_seed: bool
           ) -> tuple[dict[str, np.ndarray], dict[str, tuple[str, str]]]:
    """The runs' per-user rows as one long table (model, user_id, value[, seed]); a model label that
    appears in more than one run is shown as `<run>/<model>`."""
    counts: dict[str, int] = {}
    for run in runs:
        for model in run.models:
            counts[model] = counts.get(model, 0) + 1
    labels: dict[str, tuple[str, str]] = {}
    columns: dict[str, list[np.ndarray]] = {"model": [], "user_id": [], "value": []}
    if with_seed:
        columns["seed"] = []
    for run, table in zip(runs, tables):
        names, position = np.unique(table["model"].to_numpy(zero_copy_only=False).astype(str), return_inverse=True)
        shown = np.array([f"{run.name}/{m}" if counts[m] > 1 else m for m in names], dtype=object)
        labels.update({label: (run.name, model) for label, model in zip(shown, names)})
        columns["model"].append(shown[position])
        columns["user_id"].append(table["user_id"].to_numpy(zero_copy_only=False))
        columns["value"].append(table["value"].to_numpy(zero_copy_only=False).astype(np.float64))
        if with_seed:
            columns["seed"].append(table["seed"].to_numpy(zero_copy_only=False).astype(np.int64))
    return {name: np.concatenate(chunks) for name, chunks in columns.items()}, labels


def _seeds_of(manifest: dict[str, Any]) -> tuple[list[int], bool, dict[str, str]] | None:
    """A multi-seed run's seeds, whether its split was re-drawn per seed, and its split per seed; None for
    a single-seed run."""
    multi = manifest.get("seeds")
    if not multi:
        return None
    return [int(s) for s in multi["seeds"]], bool(multi.get("split_per_seed")), dict(multi.get("split_fingerprints")
                                                                                    or {})


def _check_same_seeds(runs: list[RunInfo], manifests: list[dict[str, Any]]) -> list[int] | None:
    """The seeds all runs share (None: all single-seed); one error line naming the first difference."""
    first, first_seeds = runs[0], _seeds_of(manifests[0])

    def words(seeds: tuple[list[int], bool, dict[str, str]] | None, manifest: dict[str, Any]) -> str:
        if seeds is None:
            return f"a single-seed run (seed {manifest.get('seed')})"
        return f"seeds {', '.join(map(str, seeds[0]))}" + (" with a split per seed" if seeds[1] else "")

    for run, manifest in zip(runs[1:], manifests[1:]):
        theirs = _seeds_of(manifest)
        if first_seeds is None and theirs is None:
            continue
        same = first_seeds is not None and theirs is not None and first_seeds[:2] == theirs[:2]
        if not same:
            raise RecstackError(
                f"cannot compare run {first.name!r} ({words(first_seeds, manifests[0])}) with run {run.name!r} "
                f"({words(theirs, manifest)}): a test over seeds pairs the same seeds (and splits) in both runs; "
                "rerun one with the other's seeds (config 'seeds' and 'split_per_seed', or --seeds N)")
        if first_seeds[2] and theirs[2] and first_seeds[2] != theirs[2]:  # type: ignore[index]
            seed = next(s for s in first_seeds[2] if first_seeds[2][s] != theirs[2].get(s))  # type: ignore[index]
            raise RecstackError(
                f"cannot compare run {first.name!r} with run {run.name!r}: their splits for seed {seed} differ "
                f"(fingerprints {first_seeds[2][seed]} vs {theirs[2].get(seed)}); compare runs made with the same "
                "data, preprocessing and split")
    return None if first_seeds is None else first_seeds[0]


# ---- multi-seed runs ----------------------------------------------------------------------------

@dataclass
class SeedsComparison:
    """Every model against the baseline over seeds (the paired t-test of the per-seed means and a sign
    count), next to the per-user paired tests of each seed (`per_seed`, one `Comparison` per seed).

    A verdict ("A beats B") is stated only where the test over seeds holds (adjusted p < alpha).
    """

    metric: str
    part: str
    seeds: list[int]
    baseline: str
    means: dict[str, list[float]]  # model -> its per-user mean at each seed, in `seeds` order
    tests: list[S.SeedTest]  # each model but the baseline, best first
    per_seed: dict[int, Comparison]
    alpha: float
    correction: str | None
    higher_is_better: bool = True
    runs: list[RunInfo] | None = None
    labels: dict[str, tuple[str, str]] | None = None

    @property
    def comparison(self) -> Comparison:
        """The first seed's per-user comparison (what a single-seed run of that seed would print)."""
        return self.per_seed[self.seeds[0]]

    def test(self, model: str) -> S.SeedTest:
        return next(t for t in self.tests if t.model == model)

    def verdicts(self) -> list[str]:
        """One sentence per model against the baseline; a claim only where the test over seeds holds."""
        return [S.verdict(t, self.metric, self.alpha, self.higher_is_better, self._significant_seeds(t.model))
                for t in self.tests]

    def _significant_seeds(self, model: str) -> int:
        return sum(bool(self.per_seed[s].row(model).significant) for s in self.seeds)

    def legend(self) -> list[str]:
        adjusted = f"{CORRECTION_NAMES[self.correction]}-adjusted" if self.correction else "unadjusted"
        lines = [f"over seeds: paired t-test of the per-seed means ({len(self.seeds)} seeds: "
                 f"{', '.join(map(str, self.seeds))}) against {self.baseline!r}, {adjusted} p over "
                 f"{len(self.tests)} comparison{'s' * (len(self.tests) != 1)}, alpha {self.alpha:g}; "
                 "signs = seeds where the model is higher / lower / equal",
                 f"per-user tests: {self.comparison.description}, within each seed; 'sig. seeds' counts the "
                 "seeds where it is significant",
                 f"part {self.part!r}; {'higher' if self.higher_is_better else 'lower'} is better"]
        note = S.power_note(len(self.seeds))
        if note:
            lines.append(f"note: {note}")
        if self.runs:
            lines.append(f"runs: {', '.join(run.name for run in self.runs)}")
        return lines

    def _cells(self) -> tuple[list[str], list[list[str]]]:
        headers = ["model", f"{self.metric} mean ± sd", "per seed", "diff", "p (seeds)", "p adj. (seeds)",
                   "signs +/-/=", "sig. seeds (per user)", "sig"]
        order = sorted(self.means, key=lambda m: -np.mean(self.means[m]) if self.higher_is_better
                       else np.mean(self.means[m]))
        rows = []
        for model in order:
            cell = S.spread(self.means[model])
            per_seed = " ".join(f"{v:.4f}" for v in self.means[model])
            mean_sd = "-" if cell is None else cell.shown()
            if model == self.baseline:
                rows.append([f"{model} (B)", mean_sd, per_seed, "", "", "", "", "", ""])
                continue
            t = self.test(model)
            rows.append([model, mean_sd, per_seed, _num(t.diff, signed=True), _p(t.p), _p(t.p_adjusted),
                         "/".join(map(str, t.signs)), f"{self._significant_seeds(model)}/{len(self.seeds)}",
                         "*" if t.significant else ""])
        return headers, rows

    def table(self):
        """A rich `Table` (over seeds) with the legend and the verdicts as its caption."""
        from rich.table import Table
        from rich.text import Text

        headers, rows = self._cells()
        # the per-seed means are in the markdown; on a terminal they would wrap every row
        keep = [i for i, header in enumerate(headers) if header != "per seed"]
        headers, rows = [headers[i] for i in keep], [[row[i] for i in keep] for row in rows]
        table = Table(title=f"{self.metric} ({self.part}) over {len(self.seeds)} seeds: every model against "
                            f"{self.baseline}", caption="\n".join(self.legend() + self.verdicts()),
                      caption_justify="left")
        for header in headers:
            table.add_column(header, justify="left" if header in ("model", "sig", "per seed") else "right")
        for cells in rows:
            table.add_row(*[Text(cell) for cell in cells])
        return table

    def to_markdown(self) -> str:
        """The table over seeds, the verdicts, and each seed's per-user comparison."""
        headers, rows = self._cells()

        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

        out = [f"### {self.metric} ({self.part}) over {len(self.seeds)} seeds: every model against {self.baseline}",
               "", line(headers), "| " + " | ".join("---" if h in ("model", "sig", "per seed") else "---:"
                                                   for h in headers) + " |", *[line(r) for r in rows], ""]
        out += [f"{text}  " for text in self.legend()] + [""]
        out += [f"- {text}" for text in self.verdicts()] + [""]
        for seed in self.seeds:  # the per-user tests of each seed, as a single-seed run prints them
            headers, rows = RunComparison(self.per_seed[seed], self.runs or [], self.part, self.labels or {})._cells()
            out += [f"#### seed {seed}: per-user tests of {self.metric} ({self.part}) against {self.baseline}", "",
                    line(headers), "| " + " | ".join("---" if h in ("model", "sig") else "---:" for h in headers)
                    + " |", *[line(r) for r in rows], ""]
        return "\n".join(out).rstrip() + "\n"


def compare_over_seeds(per_user: dict[str, np.ndarray], metric: str, seeds: Sequence[int], baseline: str | None = None,
                       *, test: str = "t", correction: str | None = "holm", alpha: float = 0.05,
                       confidence: float = 0.95, n_resamples: int = 10_000, n_bootstrap: int = 2_000, seed: int = 0,
                       part: str = "test", runs: list[RunInfo] | None = None,
                       labels: dict[str, tuple[str, str]] | None = None) -> SeedsComparison:
    """Compare the models of long-format per-user values with a `seed` column (model, user_id, value,
    seed: one metric of one part) over `seeds`; the baseline is the best mean over seeds unless given."""
    from recstack.evaluate.stats import adjust, lower_is_better

    higher_is_better = not lower_is_better(metric)
    models = [str(model) for model in dict.fromkeys(per_user["model"].tolist())]
    means: dict[str, list[float]] = {model: [] for model in models}
    per_seed: dict[int, Comparison] = {}
    for s in seeds:
        mine = per_user["seed"] == s
        for model in models:
            values = per_user["value"][mine & (per_user["model"] == model)]
            if not len(values):
                raise RecstackError(f"model {model!r} has no per-user {metric} values for seed {s}; the run is "
                                    "incomplete: run the experiment again")
            means[model].append(float(values.mean()))
    if baseline is None:
        pick = max if higher_is_better else min
        baseline = pick(models, key=lambda m: float(np.mean(means[m])))
    for s in seeds:
        mine = per_user["seed"] == s
        rows = {name: column[mine] for name, column in per_user.items() if name != "seed"}
        per_seed[s] = compare_models(rows, metric, baseline, test=test, correction=correction,  # type: ignore[arg-type]
                                     alpha=alpha, part=None, confidence=confidence, n_resamples=n_resamples,
                                     n_bootstrap=n_bootstrap, seed=seed)
    tests = [S.seed_test(model, baseline, seeds, means[model], means[baseline]) for model in models
             if model != baseline]
    for t, p_adjusted in zip(tests, adjust([t.p for t in tests], correction)):  # type: ignore[arg-type]
        t.p_adjusted = float(p_adjusted)
        t.significant = bool(p_adjusted < alpha)  # NaN (one seed) compares False
    tests.sort(key=lambda t: -np.mean(t.model_means) if higher_is_better else np.mean(t.model_means))
    return SeedsComparison(metric, part, list(seeds), baseline, means, tests, per_seed, alpha, correction,
                           higher_is_better, runs, labels)
