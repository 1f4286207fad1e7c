"""`write_report(run_dir)`: report.md and a self-contained report.html from a run directory's files.

Both are rendered from one list of blocks (headings, paragraphs, tables, charts), so they say
the same thing; report.md carries the tables only (for terminals and diffs). The charts
(`recstack.experiment.charts`): leaderboard with 95% bootstrap intervals, metric vs k,
accuracy vs fairness and vs novelty, slices, popularity bias and training curves. In the HTML
they are interactive plotly charts with plotly.js inlined once (the page opens offline: no
script, style or font is fetched), and each is also drawn with matplotlib into `plots/<chart>.png`,
shown inside <noscript>, or in place of the interactive chart when plotly is not installed.
Without either package the report has its tables and a line saying what to install.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from recstack.experiment import charts as C
from recstack.experiment import rundir
from recstack.experiment import seeds as S
from recstack.fs import atomic_write_text


@dataclass
class Leaderboard:
    columns: list[str]
    rows: list[list[Any]]  # first cell the label (str), then floats or None (a multi-seed run: also text)
    sort_label: str
    # a multi-seed run: the seeds, and per label the mean of the sorted-by figure and its interval over seeds
    seeds: list[int] | None = None
    means: dict[str, float | None] = field(default_factory=dict)
    intervals: dict[str, tuple[float, float, int]] = field(default_factory=dict)

    @property
    def title(self) -> str:
        if self.seeds is None:
            return f"sorted by test {self.sort_label}"
        return (f"sorted by the mean test {self.sort_label} over {len(self.seeds)} seeds; ≈: its interval overlaps "
                "the next row's")


def main_k(ks: Sequence[int]) -> int:
    """The cut-off the leaderboard shows: 10 when computed, else the smallest."""
    return 10 if 10 in ks else min(ks)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def leaderboard(metrics: dict[str, dict[str, Any]], ks: Sequence[int], valid_metric: str) -> Leaderboard:
    """Rows sorted by test NDCG@k (best first; models without it last), k from `main_k`."""
    k = main_k(ks)
    sort_label = f"NDCG@{k}"
    if not any(sort_label in entry.get("test", {}) for entry in metrics.values()):
        sort_label = valid_metric
    if any("across_seeds" in entry for entry in metrics.values()):
        return _seed_leaderboard(metrics, k, sort_label, valid_metric)
    columns = ["model", f"valid {valid_metric}", f"test {sort_label}",
               *[f"{name}@{k}" for name in ("Recall", "MRR", "Hit", "Coverage")], "fit s"]
    rows = []
    for label, entry in metrics.items():
        test, valid = entry.get("test", {}), entry.get("valid", {})
        rows.append([label, _number(valid.get(valid_metric)), _number(test.get(sort_label)),
                     *[_number(test.get(f"{name}@{k}")) for name in ("Recall", "MRR", "Hit", "Coverage")],
                     _number(entry.get("fit_seconds"))])
    rows.sort(key=lambda row: (row[2] is None, -(row[2] or 0.0)))
    return Leaderboard(columns, rows, sort_label)


_TEST_COLUMNS = ("Recall", "MRR", "Hit", "Coverage")


def _seed_leaderboard(metrics: dict[str, dict[str, Any]], k: int, sort_label: str, valid_metric: str) -> Leaderboard:
    """A multi-seed run's rows: mean ± sd over seeds, sorted by the mean test `sort_label`, with its
    interval over seeds, the overlap mark and the per-seed values."""
    seeds = next(entry["seeds"] for entry in metrics.values() if "seeds" in entry)
    # test columns no model has are left out: the per-seed values make this table wide already
    shown = [name for name in _TEST_COLUMNS if any(f"{name}@{k}" in entry.get("test", {}) for entry in metrics.values())]
    columns = ["model", f"valid {valid_metric}", f"test {sort_label}", f"{S.CONFIDENCE:.0%} interval (seeds)", "≈",
               f"test {sort_label} per seed", *[f"{name}@{k}" for name in shown], "fit s"]
    means = {label: _number(entry.get("test", {}).get(sort_label)) for label, entry in metrics.items()}
    order = sorted(metrics, key=lambda label: (means[label] is None, -(means[label] or 0.0)))
    spreads = {label: S.spread_of(metrics[label], "test", sort_label) for label in order}
    marks = S.overlaps_next([(c.low, c.high) if c else (None, None) for c in spreads.values()])
    rows, intervals = [], {}
    for label, mark in zip(order, marks):
        entry, main = metrics[label], spreads[label]
        if main is not None and main.low is not None:
            intervals[label] = (main.low, main.high, main.n)
        per_seed = " ".join(_cell(_number(v)) for _, v in S.per_seed_values(entry, "test", sort_label))
        rows.append([label, _shown(entry, "valid", valid_metric), None if main is None else main.shown(),
                     _interval(intervals.get(label)), "≈" if mark else "", per_seed,
                     *[_shown(entry, "test", f"{name}@{k}") for name in shown], _number(entry.get("fit_seconds"))])
    return Leaderboard(columns, rows, sort_label, list(seeds), {label: means[label] for label in order}, intervals)


def _shown(entry: dict[str, Any], part: str, metric: str) -> str | None:
    cell = S.spread_of(entry, part, metric)
    return None if cell is None else cell.shown()


# ---- blocks: one description, two renderings ---------------------------------------------------

@dataclass
class _Heading:
    text: str
    level: int = 2


@dataclass
class _Paragraph:
    text: str


@dataclass
class _Table:
    columns: list[str]
    rows: list[list[Any]]


@dataclass
class _Chart:
    chart: C.Chart


def _cell(value: Any, column: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        if "seconds" in column or column.endswith(" s") or "MB" in column:
            return f"{value:.2f}"
        return f"{value:.4f}" if abs(value) < 100 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _blocks(run_dir: Path) -> tuple[str, list[Any]]:
    config = rundir.read_config_dict(run_dir)
    manifest = rundir.read_manifest(run_dir)
    metrics = rundir.read_metrics(run_dir)
    curves = rundir.read_curves(run_dir)
    ks = config.get("ks", [10])
    valid_metric = config.get("valid_metric", "NDCG@10")
    board = leaderboard(metrics, ks, valid_metric)
    dataset, split, protocol = manifest["dataset"], manifest["split"], manifest["protocol"]
    title = f"recstack run: {dataset['name']}"
    blocks: list[Any] = [_Paragraph(
        f"Run `{manifest.get('run_name', run_dir.name)}`, started {manifest['started']}, "
        f"finished {manifest['finished']} "
        f"({manifest['total_seconds']:.1f} s), {_seed_words(manifest)}.")]

    # protocol
    skipped = {part: sorted({entry["n_skipped_users"][part] for entry in metrics.values()})
               for part in ("valid", "test")} if metrics else {}
    evaluated = {part: sorted({entry["n_users"][part] for entry in metrics.values()})
                 for part in ("valid", "test")} if metrics else {}
    params = ", ".join(f"{k}={v}" for k, v in split.get("params", {}).items()) or "defaults"
    blocks += [
        _Heading("Protocol"),
        _Table(["setting", "value"], [
            ["split", f"{split['method']} ({params})"],
            ["split fingerprint", split["fingerprint"]],
            *([["split fingerprint per seed", ", ".join(f"{seed}: {fingerprint}" for seed, fingerprint in
                                                        manifest["seeds"].get("split_fingerprints", {}).items())]]
              if manifest.get("seeds", {}).get("split_per_seed") else []),
            ["data fingerprint", dataset["fingerprint"]],
            ["ranking", f"{protocol['ranking']} (all {split.get('n_items', '?')} items are candidates)"
                        if "item_pool_sizes" not in split else
                        f"each part ranks its own cold items only (valid {split['item_pool_sizes'].get('valid', '?')}, "
                        f"test {split['item_pool_sizes'].get('test', '?')} of {split.get('n_items', '?')} items)"],
            *_history_rows(protocol),
            ["relevance", "graded" if protocol.get("graded") else "binary"],
            ["users evaluated (valid / test)", " / ".join(_join(evaluated.get(p, [])) for p in ("valid", "test"))],
            ["users skipped, no held-out items (valid / test)",
             " / ".join(_join(skipped.get(p, [])) for p in ("valid", "test"))],
            *_cold_user_rows(protocol.get("cold_users")),
            *_unscorable_rows(metrics, (protocol.get("cold_users") or {}).get("policy", "include")),
            ["model selection", f"validation {valid_metric} only; test figures choose nothing"],
        ]),
    ]

    # leaderboard
    labels = protocol.get("metrics") or sorted({m for e in metrics.values() for m in e.get("test", {})})
    order = [row[0] for row in board.rows]
    if board.seeds is None:
        cis = _leaderboard_cis(run_dir, board)
        columns = [*board.columns[:3], f"{C.CI_PCT} CI", *board.columns[3:]]
        rows = [[*row[:3], _interval(cis.get(row[0])), *row[3:]] for row in board.rows]
        points = [(row[0], row[2]) for row in board.rows]
        note = (f"Sorted by test {board.sort_label}. {C.CI_PCT} CI of test {board.sort_label}: "
                f"{C.BOOTSTRAP_NOTE}. Recall, MRR, Hit and Coverage are test figures.")
    else:
        cis, columns, rows = board.intervals, board.columns, board.rows
        points = [(label, board.means.get(label)) for label in order]
        note = (f"Mean ± sample standard deviation over {len(board.seeds)} seeds ({', '.join(map(str, board.seeds))}), "
                f"sorted by the mean test {board.sort_label}. {S.INTERVAL_NOTE}. ≈ marks a model whose interval "
                "overlaps the next row's: the run does not order those two. The interval reflects the training "
                "seeds" + (" and the re-drawn splits" if manifest.get("seeds", {}).get("split_per_seed") else "")
                + ", not the choice of test users (`recstack compare` tests both). Recall, MRR, Hit and Coverage "
                "are test figures; fit s is the mean per seed.")
    blocks += [_Heading("Leaderboard"), _Paragraph(note), _Table(columns, rows)]
    if board.rows:
        blocks.append(_Chart(C.leaderboard_chart(points, board.sort_label, cis,
                                                 None if board.seeds is None else S.INTERVAL_NOTE)))
        blocks += [_Chart(chart) for chart in C.k_curves(metrics, ks, order=order) if len(ks) > 1]
    for part in ("test", "valid"):
        blocks += [
            _Heading(f"All {'test' if part == 'test' else 'validation'} metrics"
                     + ("" if board.seeds is None else " (mean ± sd over seeds)"), 3),
            _Table(["model", *labels], [[label, *[_number(metrics[label][part].get(m)) if board.seeds is None
                                                  else _shown(metrics[label], part, m) for m in labels]]
                                        for label in order]),
        ]
    if board.seeds is not None:
        blocks += _per_seed_blocks(metrics, order, labels, valid_metric, board.seeds)
        # the analysis sections describe the first seed's models (those saved as models/<label>/)
        metrics = {label: entry.get("per_seed", {}).get(str(board.seeds[0]), entry) for label, entry in metrics.items()}
        curves = {label: curve for label, curve in curves.items() if label in metrics}
        blocks.append(_Paragraph(f"The sections below describe the first seed's models ({board.seeds[0]}, saved as "
                                 "models/<label>/); every seed's figures are in metrics.json under `per_seed`."))

    blocks += _analysis_blocks(metrics, order, ks)

    # data
    stats = dataset.get("stats", {})
    source = dataset.get("provenance", {}).get("source")
    blocks += [
        _Heading("Dataset"),
        _Paragraph(f"{dataset['name']}" + (f" from `{_cell(source)}`" if source else "")
                   + f"; preprocessing: {_settings(manifest.get('preprocessing') or {})}."),
        _Table(["statistic", "value"], [[key, value] for key, value in _flatten(stats).items()]),
        _Heading("Split", 3),
        _Table(["part", "events", "users with events"],
               [[part, split.get(f"{part}_events"), split.get(f"{part}_users")]
                for part in ("train", "valid", "test")]),
    ]

    # timings
    timings = manifest.get("timings", {})
    blocks += [
        _Heading("Timings"),
        _Table(["model", "fit s", "eval valid s", "eval test s", "peak RSS MB (process, so far)"],
               [[label, t.get("fit_seconds"), t.get("eval_valid_seconds"), t.get("eval_test_seconds"),
                 t.get("peak_rss_mb")] for label, t in timings.items()]),
        _Paragraph(f"Data loading, preprocessing and splitting: {manifest.get('data_seconds', 0.0):.2f} s. "
                   f"Peak resident memory of the run: {manifest.get('peak_rss_mb', 0.0):,.0f} MB."),
    ]

    # curves
    if curves:
        best_epochs = {label: metrics[label]["best_epoch"] for label in curves
                       if isinstance(metrics.get(label, {}).get("best_epoch"), int)}
        rows = []
        for label, epochs in curves.items():
            best = best_epochs.get(label)
            for key, values in _curve_series(epochs).items():
                ys = [y for _, y in values]
                at_best = next((y for x, y in values if x == best), None)
                rows.append([label, key, len(ys), ys[0], ys[-1], min(ys), max(ys), best, at_best])
        blocks += [_Heading("Training curves"),
                   _Paragraph("Per-epoch values logged by each model's trainer (validation metrics on the "
                              "validation part). Restored epoch: the epoch whose weights the model kept (its best "
                              "validation epoch; the last one when nothing was validated)."),
                   _Table(["model", "series", "epochs", "first", "last", "min", "max", "restored epoch",
                           "at restored epoch"], rows)]
        blocks += [_Chart(chart) for chart in C.training_charts(curves, best_epochs)]

    versions = manifest.get("versions", {})
    blocks += [_Heading("Environment"),
               _Paragraph(", ".join(f"{name} {version}" for name, version in versions.items() if version))]
    return title, blocks


def _seed_words(manifest: dict[str, Any]) -> str:
    """'seed 2020', or for a multi-seed run its seeds and how the split was drawn."""
    multi = manifest.get("seeds")
    if not multi:
        return f"seed {manifest['seed']}"
    split = ("the split re-drawn with each seed" if multi.get("split_per_seed")
             else f"one split drawn with seed {manifest['seed']}")
    return f"seeds {', '.join(map(str, multi['seeds']))} (each model trained once per seed; {split})"


def _per_seed_blocks(metrics: dict[str, Any], order: list[str], labels: list[str], valid_metric: str,
                     seeds: list[int]) -> list[Any]:
    """One row per model and seed: the validation metric and every test metric."""
    rows = []
    for label in order:
        per_seed = metrics[label].get("per_seed", {})
        for seed in seeds:
            record = per_seed.get(str(seed), {})
            rows.append([label, str(seed), _number(record.get("valid", {}).get(valid_metric)),
                         *[_number(record.get("test", {}).get(m)) for m in labels]])
    return [_Heading("Per-seed values", 3),
            _Table(["model", "seed", f"valid {valid_metric}", *[f"test {m}" for m in labels]], rows)]


def _history_rows(protocol: dict[str, Any]) -> list[list[Any]]:
    """The protocol table's rows on what each part's users are ranked with (`test_history`) and which
    items their lists leave out (`mask_history`)."""
    test = protocol["test_history"]
    choice = "train_valid" if test.startswith("train + valid") else "train"
    masked = protocol.get("test_masked", test if protocol["mask_history"] else "none")
    return [
        ["test history (test_history)", f"{choice}: valid users are ranked from {protocol['valid_history']}, "
                                        f"test users from {test}"],
        ["history masking (mask_history)",
         f"on: lists leave out the items of {protocol['valid_history']} (valid) and of {masked} (test)"
         if protocol["mask_history"] else "off: items already in the history may be recommended and count as hits"],
        ["score precision (score_precision)",
         "bf16: dot-product models ranked from bfloat16 products, candidates re-scored in float32; others float32"
         if protocol.get("score_precision") == "bf16" else "fp32"],
    ]


def _cold_user_rows(cold: dict[str, Any] | None) -> list[list[Any]]:
    """The protocol table's rows on users without history: the policy and the per-part counts (runs
    written before the counts existed have none)."""
    if not cold:
        return []
    min_history = cold.get("min_history", 1)
    who = "no history" if min_history == 1 else f"fewer than {min_history} history events"
    policy = cold.get("policy", "include")
    what = {"include": "ranked by each model as it scores them (the model decides)",
            "skip": "left out of every metric (counted as skipped)",
            "fallback": f"ranked by the fallback model {cold.get('fallback')!r} for every model, in validation "
                        "(early stopping) and test"}.get(policy, "")

    def per_part(key: str) -> str:
        cells = []
        for part in ("valid", "test"):
            counts = cold.get(part) or {}
            n, total = counts.get(key), counts.get("n_users")
            cells.append("-" if n is None else f"{n:,}" + (f" ({n / total:.1%})" if total else ""))
        return " / ".join(cells)

    rows = [["cold-user policy", f"{policy}: users with {who} are {what}"],
            ["users with no history (valid / test)", per_part("n_no_history")],
            [f"users with fewer than {cold.get('few_history', 5)} history events, none included (valid / test)",
             per_part("n_few_history")]]
    if policy == "skip":
        rows.append([f"users with {who} skipped by the policy (valid / test)", per_part("n_skipped")])
    elif policy == "fallback":
        rows.append([f"users ranked by the fallback {cold.get('fallback')!r}, share of the evaluated (valid / test)",
                     per_part("n_fallback")])
    return rows


def _unscorable_rows(metrics: dict[str, Any], policy: str) -> list[list[Any]]:
    """A protocol row naming the models that said they cannot score some evaluated users (a user
    embedding that never trained, an empty history), with how many, and who ranked those users."""
    cells = []
    for label, entry in metrics.items():
        counts = entry.get("n_unscorable_users") or {}
        if any(counts.get(part) for part in ("valid", "test")):
            cells.append(f"{label} {counts.get('valid', 0):,} / {counts.get('test', 0):,}")
    if not cells:
        return []
    who = {"fallback": "ranked by the fallback model", "skip": "ranked by the model itself (not cold by history, so "
           "not skipped)"}.get(policy, "ranked by the model itself (policy include)")
    return [["users a model says it cannot score (valid / test)", f"{'; '.join(cells)}: {who}"]]


_SIDE_BY_SIDE = (("coverage", "Coverage"), ("novelty", "Novelty"), ("APLT", "APLT"),
                 ("Gini (corrected)", "Gini_corrected"), ("Jain (corrected)", "Jain_corrected"),
                 ("miscalibration", "Miscalibration"))


def _analysis_blocks(metrics: dict[str, Any], order: list[str], ks: Sequence[int]) -> list[Any]:
    """The beyond-accuracy, slice and sampled sections (each only when metrics.json has it)."""
    k = main_k(ks)
    blocks: list[Any] = []
    with_beyond = [label for label in order if "beyond" in metrics[label]]
    if with_beyond:
        blocks += [
            _Heading("Accuracy and fairness side by side"),
            _Paragraph(f"Test top-{k} lists, the ones the accuracy metrics were computed from. Coverage: share of "
                       "the catalogue recommended to anyone; novelty: mean self-information of recommended items "
                       "(bits); APLT: share of long-tail items in a list; Gini and Jain of item exposure, "
                       "corrected to the range top-k lists can reach (Gini: 0 = fairest, Jain: 1 = fairest); "
                       "miscalibration: Steck's KL divergence between the genres of the history and of the list "
                       "(0 = calibrated). Definitions: docs/beyond_accuracy.md."),
            _Table(["model", f"NDCG@{k}", f"Recall@{k}", *[name for name, _ in _SIDE_BY_SIDE]],
                   [[label, _number(metrics[label]["test"].get(f"NDCG@{k}")),
                     _number(metrics[label]["test"].get(f"Recall@{k}")),
                     *[_number(metrics[label]["beyond"].get(f"{key}@{k}")) for _, key in _SIDE_BY_SIDE]]
                    for label in with_beyond]),
        ]
        first = metrics[with_beyond[0]]["beyond"]
        notes = list(first.get("notes", []))
        notes.append(f"Long tail: items outside the short head holding {first.get('head_share', 0.8):.0%} of train "
                     f"interactions ({first.get('n_long_tail_items', '?')} items). Serendipity and "
                     "unexpectedness are measured against the most-popular list of the same user.")
        blocks.append(_Paragraph(" ".join(notes)))
        for x_key, x_title, key, caption in (
                ("Gini_corrected", f"exposure Gini (corrected) @{k}", "accuracy_fairness",
                 "one point per model; left is fairer exposure (0 = every item equally exposed), up is more "
                 "accurate"),
                ("Novelty", f"novelty @{k} (bits)", "accuracy_novelty",
                 "one point per model; right recommends less popular (more novel) items, up is more accurate")):
            chart = C.tradeoff_chart(metrics, k, x_key, x_title, key, caption, order=with_beyond)
            if chart is not None:
                blocks.append(_Chart(chart))
        popularity = C.popularity_chart(metrics, order=with_beyond)
        if popularity is not None:
            blocks += [_Heading("Popularity bias", 3), _Table(
                ["model", *[f"{b['bucket']} history / recommended" for b in
                            metrics[with_beyond[0]]["beyond"]["popularity_bias"]["buckets"]]],
                [[label, *[f"{b['historical']:.1f} / {b['recommended']:.1f}"
                           for b in metrics[label]["beyond"].get("popularity_bias", {}).get("buckets", [])]]
                 for label in with_beyond]), _Chart(popularity)]
        for cut in first.get("ks", [k]):
            keys = [key for key in first if key.endswith(f"@{cut}")]
            blocks += [_Heading(f"All beyond-accuracy and fairness measures @{cut}", 3),
                       _Table(["model", *[key.removesuffix(f"@{cut}") for key in keys]],
                              [[label, *[_number(metrics[label]["beyond"].get(key)) for key in keys]]
                               for label in with_beyond])]

    with_slices = [label for label in order if metrics[label].get("slices")]
    if with_slices:
        blocks += [_Heading("Slices"),
                   _Paragraph(f"Test NDCG@{k} per group (users in the group in brackets; Recall@{k} and every "
                              "other metric are in metrics.json under `slices`). User slices split the evaluated "
                              "users, so their counts add up to the users evaluated; item slices cut each user's "
                              "held-out items to the group's items and keep the full ranking unchanged. The charts "
                              f"add each group's {C.CI_PCT} bootstrap interval and fade groups of fewer than "
                              f"{C.MIN_SLICE_USERS} users.")]
        for name, entry in metrics[with_slices[0]]["slices"].items():
            groups = list(entry["groups"])
            detail = entry.get("definition", "")
            if entry.get("cut_points") is not None:
                detail += f" Cut points: {', '.join(f'{c:g}' for c in entry['cut_points'])}."
            if entry.get("bucketing"):
                detail += f" Bucketing: {entry['bucketing']}."
            blocks += [_Heading(f"{name} ({entry.get('kind', '')})", 3)]
            if detail.strip():
                blocks.append(_Paragraph(detail.strip()))
            blocks.append(_Table(
                ["model", *[f"{g} ({metrics[with_slices[0]]['slices'][name]['groups'][g]['n_users']:,})"
                            for g in groups]],
                [[label, *[_number(metrics[label]["slices"].get(name, {}).get("groups", {}).get(g, {})
                                   .get(f"NDCG@{k}")) for g in groups]] for label in with_slices]))
            blocks += [_Chart(chart) for chart in C.slice_charts(metrics, k, order=with_slices)
                       if chart.key == f"slice_{C.safe_key(name)}"]

    with_sampled = [label for label in order if metrics[label].get("sampled")]
    if with_sampled:
        blocks += [_Heading("Sampled evaluation (sampled metrics, not full ranking)"),
                   _Paragraph("Each user's held-out items ranked against sampled non-interacted items only "
                              "(Krichene & Rendle 2020). Sampled figures are labelled `sampled_` and are not "
                              "comparable with the full-ranking ones; Kendall's tau compares the order of the "
                              "models under the two protocols (1 = same order).")]
        rows, taus = [], []
        for name in ("NDCG", "Recall", "Hit"):
            full_key, sampled_key = f"{name}@{k}", f"sampled_{name}@{k}"
            pairs = [(metrics[m]["test"].get(full_key), metrics[m]["sampled"].get(sampled_key)) for m in with_sampled]
            if all(_number(a) is not None and _number(b) is not None for a, b in pairs):
                taus.append([f"{full_key} vs {sampled_key}", kendall_tau([a for a, _ in pairs],
                                                                         [b for _, b in pairs])])
        full_rank = _ranks([metrics[m]["test"].get(f"NDCG@{k}") for m in with_sampled])
        sampled_rank = _ranks([metrics[m]["sampled"].get(f"sampled_NDCG@{k}") for m in with_sampled])
        for i, label in enumerate(with_sampled):
            rows.append([label, _number(metrics[label]["test"].get(f"NDCG@{k}")), full_rank[i],
                         _number(metrics[label]["sampled"].get(f"sampled_NDCG@{k}")), sampled_rank[i],
                         _number(metrics[label]["sampled"].get(f"sampled_Recall@{k}"))])
        blocks += [_Table(["model", f"full NDCG@{k}", "full rank", f"sampled_NDCG@{k}", "sampled rank",
                           f"sampled_Recall@{k}"], rows),
                   _Table(["comparison (full vs sampled)", "Kendall tau"], taus)]
    return blocks


def _ranks(values: list[Any]) -> list[int | None]:
    """1 = best; models without a value get None."""
    finite = sorted({v for v in values if _number(v) is not None}, reverse=True)
    return [finite.index(v) + 1 if _number(v) is not None else None for v in values]


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b between two scorings of the same models (None with fewer than two models)."""
    if len(x) < 2:
        return None
    from scipy.stats import kendalltau

    tau = kendalltau(x, y).statistic
    return float(tau) if math.isfinite(tau) else None


def _settings(settings: dict[str, Any]) -> str:
    return ", ".join(f"{key}={'none' if value is None else value}" for key, value in settings.items()) or "none"


def _join(values: list[Any]) -> str:
    return "/".join(f"{v:,}" for v in values) if values else "-"


def _flatten(stats: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in stats.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# ---- leaderboard intervals ---------------------------------------------------------------------

def _leaderboard_cis(run_dir: Path, board: Leaderboard) -> dict[str, tuple[float, float, int]]:
    """model -> bootstrap interval of the leaderboard's test metric, from per_user.parquet (as `compare`)."""
    path = run_dir / rundir.PER_USER
    if not path.exists() or not board.rows:
        return {}
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["model", "part", "user_id", "metric", "value"])
    columns = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    return C.leaderboard_cis(columns, board.sort_label, [row[0] for row in board.rows])


def _interval(ci: tuple[float, float, int] | None) -> str | None:
    return None if ci is None else f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def _curve_series(epochs: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Numeric series per key of a trainer's per-epoch log, x = the logged epoch (else its position)."""
    keys = [k for k in dict.fromkeys(k for e in epochs for k in e) if k not in ("epoch", "seconds")]
    series = {}
    for key in keys:
        points = [(e.get("epoch", i + 1), _number(e.get(key))) for i, e in enumerate(epochs)]
        points = [(float(x), y) for x, y in points if isinstance(x, (int, float)) and y is not None]
        if points:
            series[key] = points
    return series


# ---- renderings --------------------------------------------------------------------------------

def _markdown(title: str, blocks: list[Any]) -> str:
    lines = [f"# {title}", ""]
    for block in blocks:
        if isinstance(block, _Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, _Paragraph):
            lines += [block.text, ""]
        elif isinstance(block, _Table):
            lines.append("| " + " | ".join(block.columns) + " |")
            lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(block.columns))) + "|")
            for row in block.rows:
                cells = [_cell(v, c).replace("|", "\\|") for v, c in zip(row, block.columns)]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
        elif isinstance(block, _Chart):
            continue  # charts are in report.html; the numbers are in the tables
    return "\n".join(lines).rstrip() + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:980px;
color:#222;line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem}h2{margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0 1rem;font-size:.9rem;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #ddd;padding:.25rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f4f4f4}
figure{margin:.5rem 0 1.2rem}figcaption{font-size:.85rem;color:#555}
code{background:#f4f4f4;padding:0 .2rem}figure.chart{max-width:100%}figure.chart img{max-width:100%;height:auto}
.note{background:#fff8e1;border:1px solid #f0d98a;padding:.4rem .6rem}
"""


def _inline(text: str) -> str:
    """Escape, then turn `code` spans into <code>."""
    pieces = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces))


def _html(title: str, blocks: list[Any], figures: dict[str, str], note: str | None = None) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>"]
    if note:
        out.append(f'<p class="note">{_inline(note)}</p>')
    for block in blocks:
        if isinstance(block, _Heading):
            out.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, _Paragraph):
            out.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, _Table):
            out.append("<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in block.columns)
                       + "</tr></thead><tbody>")
            for row in block.rows:
                out.append("<tr>" + "".join(f"<td>{html.escape(_cell(v, c))}</td>" for v, c in zip(row, block.columns))
                           + "</tr>")
            out.append("</tbody></table>")
        elif isinstance(block, _Chart) and block.chart.key in figures:
            chart = block.chart
            out.append(f'<figure class="chart" data-chart="{html.escape(chart.key)}">{figures[chart.key]}'
                       f"<figcaption>{_inline(chart.caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


_PLOTLY_CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"format": "png"}}


def _figures(run_dir: Path, charts: list[C.Chart], interactive: bool, static: bool) -> dict[str, str]:
    """chart key -> the HTML of its figure: plotly div (+ <noscript> PNG) or the PNG alone."""
    pngs: dict[str, str] = {}
    out: dict[str, str] = {}
    if static and charts:
        (run_dir / rundir.PLOTS).mkdir(exist_ok=True)
        for chart in charts:
            try:
                C.to_png(chart, rundir.plot_path(run_dir, chart.key))
                pngs[chart.key] = rundir.plot_href(chart.key)
            except Exception as error:  # noqa: BLE001 - a chart must not cost a finished run its report
                out[chart.key] = _failed(chart, "matplotlib", error)
    with_js = False
    for chart in charts:
        image = (f'<img src="{pngs[chart.key]}" alt="{html.escape(chart.title)}" width="{C.PNG_SIZE[0]}" '
                 f'height="{C.PNG_SIZE[1]}">' if chart.key in pngs else "")
        if interactive:
            try:
                fig = C.to_plotly(chart)
                # plotly.js inline once, before the first chart: no script is fetched
                div = fig.to_html(full_html=False, include_plotlyjs=not with_js, div_id=f"chart-{chart.key}",
                                  config=_PLOTLY_CONFIG, default_width="100%",
                                  default_height=f"{C.PLOTLY_SIZE[1]}px")
            except Exception as error:  # noqa: BLE001
                out[chart.key] = out.get(chart.key, "") + _failed(chart, "plotly", error) + image
                continue
            with_js = True
            out[chart.key] = out.get(chart.key, "") + div + (f"<noscript>{image}</noscript>" if image else "")
        elif image:
            out[chart.key] = image
    return out


def _failed(chart: C.Chart, library: str, error: Exception) -> str:
    return (f'<p class="note">{library} could not draw "{html.escape(chart.title, quote=False)}": '
            f"{type(error).__name__}: {html.escape(str(error), quote=False)}</p>")


def _unique_keys(charts: list[C.Chart]) -> None:
    seen: set[str] = set()
    for chart in charts:
        key, n = chart.key, 1
        while key in seen:
            n += 1
            key = f"{chart.key}_{n}"
        chart.key = key
        seen.add(key)


def write_report(run_dir: str | Path, *, interactive: bool | None = None, static: bool | None = None
                 ) -> tuple[Path, Path]:
    """Write report.md and report.html (and plots/*.png) into `run_dir` from its files.

    `interactive` (plotly charts) and `static` (matplotlib PNGs) default to whether the package
    is installed; passing False leaves that rendering out.
    """
    run_dir = Path(run_dir)
    title, blocks = _blocks(run_dir)
    charts = [block.chart for block in blocks if isinstance(block, _Chart)]
    _unique_keys(charts)
    have = C.plotting_backends()
    interactive = have["plotly"] if interactive is None else interactive and have["plotly"]
    static = have["matplotlib"] if static is None else static and have["matplotlib"]
    note = None
    if charts and not interactive and not static:
        note = ("Charts left out: install `plotly` (interactive charts) or `matplotlib` (static PNGs), e.g. "
                "`pip install plotly matplotlib`, then `recstack.experiment.write_report(run_dir)` again.")
    elif charts and not interactive:
        note = "Static charts; install `plotly` for interactive ones (`pip install plotly`)."
    md_path, html_path = run_dir / rundir.REPORT_MD, run_dir / rundir.REPORT_HTML
    atomic_write_text(md_path, _markdown(title, blocks))
    atomic_write_text(html_path, _html(title, blocks, _figures(run_dir, charts, interactive, static), note))
    return md_path, html_path
