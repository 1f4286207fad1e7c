"""`compare_runs(run_dirs)`: significance tests between the models of one or more run directories.

Reads each run's `manifest.json` and `per_user.parquet` (nothing is refitted or re-scored) and
hands the per-user values to `recstack.evaluate.stats.compare_models`. Per-user values
pair up only when the runs evaluated the same users on the same held-out items, so runs whose
split fingerprints (or evaluation protocols: `Protocol`) differ are refused with the reason.
`Protocol` is also what the peer benchmarks check before they print a ratio against another
library. A model name that appears in more than one run is prefixed with its run name
(`<run>/<model>`).
The result renders as a rich table or as markdown, both with the same legend.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from recstack.errors import RecstackError
from recstack.evaluate.stats import CORRECTION_NAMES, Comparison, compare_models
from recstack.experiment import rundir


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

    @classmethod
    def from_manifest(cls, protocol: dict[str, Any]) -> "Protocol":
        mask = bool(protocol.get("mask_history", True))
        test_history = protocol.get("test_history", cls.test_history)
        masked = protocol.get("test_masked", test_history if mask else "none")  # before test_masked: the history
        return cls(protocol.get("ranking", "full"), mask, test_history, masked, _cold_user_policy(protocol),
                   bool(protocol.get("graded", False)))

    @classmethod
    def of_config(cls, config: Any, split: Any) -> "Protocol":
        """The protocol `recstack run` records for `config` (an `ExperimentConfig`) on `split`."""
        from recstack.experiment.steps import history_names

        names = history_names(config, split)
        return cls("full" if split.item_pool("test") is None else "item_pool", config.mask_history,
                   names["test_history"], names["test_masked"],
                   _cold_user_policy({"cold_users": config.cold_users.model_dump(mode="json")}))

    @classmethod
    def of_run(cls, run_dir: str | os.PathLike) -> "Protocol":
        """The protocol a `recstack run` directory's figures were made under."""
        return cls.from_manifest(rundir.read_manifest(Path(run_dir)).get("protocol", {}))

    def difference(self, other: "Protocol", part: str = "test") -> tuple[str, Any, Any] | None:
        """The first setting that differs (name, this value, the other's), or None. For `part` valid the
        test-only settings are left out: they change no validation figure."""
        for field in fields(self):
            if part == "valid" and field.name in ("test_history", "test_masked"):
                continue
            mine, theirs = getattr(self, field.name), getattr(other, field.name)
            if mine != theirs:
                return field.name, mine, theirs
        return None

    def describe(self) -> str:
        """One line: `ranking full, mask_history on, test_history train + valid, ...`."""
        def shown(value: Any) -> str:
            return ("on" if value else "off") if isinstance(value, bool) else str(value)

        return ", ".join(f"{field.name} {shown(getattr(self, field.name))}" for field in fields(self))


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
            f"diff = mean over paired users of (model - baseline); part {self.part!r}; "
            f"{'higher' if c.higher_is_better else 'lower'} is better",
            f"runs: {runs}; split fingerprint {self.fingerprint}",
        ]

    def _cells(self) -> tuple[list[str], list[list[str]]]:
        c = self.comparison
        pct = f"{c.confidence:.0%}"
        adjusted = f"p ({c.correction})" if c.correction else "p (uncorrected)"
        headers = ["model", "users", c.metric, f"{pct} CI", "diff", f"diff {pct} CI", c.effect_name, "p",
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


def _read_run(run_dir: Path) -> tuple[dict[str, Any], Path]:
    rundir.require(run_dir, (rundir.MANIFEST, rundir.PER_USER), "give folders that `recstack run` wrote")
    manifest, values_path = rundir.read_manifest(run_dir), run_dir / rundir.PER_USER
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
) -> RunComparison:
    """Test every model of the given runs against the best one (or `baseline`) on `metric`.

    `metric` defaults to the first run's validation metric (NDCG@10 by default). Runs must share
    their split fingerprint; the other arguments are those of `compare_models`.
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

    runs: list[RunInfo] = []
    protocols: list[dict[str, Any]] = []
    tables = []
    for path in paths:
        manifest, values_path = _read_run(path)
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
        tables.append(table)
    if len({run.name for run in runs}) < len(runs):  # same name in different folders: use the paths
        for run in runs:
            run.name = str(run.run_dir)
    _check_same_split(runs, protocols, part)

    counts: dict[str, int] = {}
    for run in runs:
        for model in run.models:
            counts[model] = counts.get(model, 0) + 1
    labels: dict[str, tuple[str, str]] = {}
    columns: dict[str, list[np.ndarray]] = {"model": [], "user_id": [], "value": []}
    for run, table in zip(runs, tables):
        names, position = np.unique(table["model"].to_numpy(zero_copy_only=False).astype(str), return_inverse=True)
        shown = np.array([f"{run.name}/{m}" if counts[m] > 1 else m for m in names], dtype=object)
        labels.update({label: (run.name, model) for label, model in zip(shown, names)})
        columns["model"].append(shown[position])
        columns["user_id"].append(table["user_id"].to_numpy(zero_copy_only=False))
        columns["value"].append(table["value"].to_numpy(zero_copy_only=False).astype(np.float64))
    if baseline is not None and counts.get(baseline, 0) > 1:
        choices = [f"{run.name}/{baseline}" for run in runs if baseline in run.models]
        raise RecstackError(f"baseline {baseline!r} is in more than one run; name one of {', '.join(choices)}")
    merged = {name: np.concatenate(chunks) for name, chunks in columns.items()}
    comparison = compare_models(merged, metric, baseline, test=test, correction=correction,  # type: ignore[arg-type]
                                alpha=alpha, part=None, confidence=confidence, n_resamples=n_resamples,
                                n_bootstrap=n_bootstrap, seed=seed)
    return RunComparison(comparison, runs, part, labels)
