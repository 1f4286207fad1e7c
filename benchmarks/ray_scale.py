"""Ray scale-out against the single process, on the same data, split, model and machine (issue 18).

    .venv/bin/python benchmarks/ray_scale.py evaluate [--nnz 1000000] [--workers 2]
    .venv/bin/python benchmarks/ray_scale.py tune [--trials 8] [--workers 2]
    .venv/bin/python benchmarks/ray_scale.py ddp [--models bpr-adam lightgcn sasrec] [--workers 2]

- evaluate: full-ranking evaluation (all users, history masked, NDCG/Recall/... @10,20) of one
  fitted model, in this process with 1 and with `workers` BLAS threads, and as Ray tasks on a local
  instance with `workers` CPUs (first call: the model and log go to the object store, the workers
  start; then warm calls). The per-user values are checked equal before any time is printed.
- tune: `examples/tune_ease.yaml`'s data and split with LightGCN's step and L2 weight searched
  (40 epochs, validated every 10) or ItemKNN's neighbourhood size and shrinkage (fits of
  0.2 s, so Ray's per-trial overhead shows): `--trials` trials with the local Optuna backend, then
  the same number on Ray Tune with `workers` trials at once; trials per hour.
- ddp: models of the ml-100k configs (bpr-adam, lightgcn: random 8:1:1 of neural_cf_ml100k.yaml;
  sasrec: leave-last-one-out of sequential_ml100k.yaml) fitted with `workers: 1` and with
  `workers: N` (Ray Train, gloo), early stopping on validation as configured; valid / test
  NDCG@10, best epoch and wall seconds of each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from machine import print_machine

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _seconds(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        tick = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - tick)
    return statistics.median(times), result


def bench_evaluate(args: argparse.Namespace) -> None:
    from threadpoolctl import threadpool_limits

    from recstack.cluster import RaySettings, connect
    from recstack.cluster.evaluate import RayRanker
    from recstack.data.synthetic import power_law_interactions
    from recstack.evaluate import evaluate
    from recstack.models import build
    from recstack.split import make_split

    data = power_law_interactions(args.nnz, seed=0)
    split = make_split(data, "random", seed=2020, ratios=(0.8, 0.1, 0.1))
    model = build(args.model, {"seed": 0} if args.model in ("als", "bpr") else {}).fit(split.train)
    history = split.history("test")
    print(f"data: power-law synthetic, {args.nnz:,} events, {data.n_users:,} users x {data.n_items:,} items; "
          f"model {args.model}; full ranking of the test users ({np.count_nonzero(np.diff(split.test.indptr)):,})")
    rows = []
    with threadpool_limits(1):
        one, local = _seconds(lambda: evaluate(model, history, split.test), args.repeats)
    rows.append(("this process, 1 BLAS thread", one))
    with threadpool_limits(args.workers):
        many, _ = _seconds(lambda: evaluate(model, history, split.test), args.repeats)
    rows.append((f"this process, {args.workers} BLAS threads", many))
    connect(RaySettings(workers=args.workers))
    ranker = RayRanker(RaySettings(workers=args.workers))
    tick = time.perf_counter()
    first = evaluate(model, history, split.test, ranker=ranker)
    rows.append((f"Ray, {args.workers} tasks of 1 thread, first call (object store, worker start)",
                 time.perf_counter() - tick))
    warm, again = _seconds(lambda: evaluate(model, history, split.test, ranker=ranker), args.repeats)
    rows.append((f"Ray, {args.workers} tasks of 1 thread, warm (median of {args.repeats})", warm))
    for result in (first, again):
        assert all(np.array_equal(local.per_user[k], result.per_user[k]) for k in local.per_user), "not equal"
    print("per-user values: equal to the single-process evaluation, every user and metric")
    print("| evaluation | seconds | vs this process, 1 thread |")
    print("|---|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} | {one / seconds:.2f}x |")


def bench_tune(args: argparse.Namespace) -> None:
    from recstack.experiment.config import load_config, parse_config
    from recstack.experiment.tune import tune

    base = load_config(EXAMPLES / "tune_ease.yaml").model_dump(mode="json", exclude_none=True)
    spaces = {"itemknn": {"model": "itemknn", "space": {"n_neighbors": {"low": 10, "high": 400},
                                                        "shrink": {"low": 0.0, "high": 100.0}}},
              "lightgcn": {"model": "lightgcn", "params": {"epochs": 40, "eval_every": 10},
                           "space": {"learning_rate": {"low": 1e-3, "high": 1e-2, "log": True},
                                     "reg": {"low": 1e-5, "high": 1e-3, "log": True}}}}
    base["tune"] = {**spaces[args.tune_model], "n_trials": args.trials}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for backend in ("local", "ray"):
            raw = {**base, "output_dir": str(Path(folder) / backend)}
            if backend == "ray":
                raw["ray"] = {"workers": args.workers}
            config = parse_config(raw)
            tick = time.perf_counter()
            result = tune(config, final_run=False, progress=False)
            seconds = time.perf_counter() - tick
            trials = json.loads((result.tune_dir / "trials.json").read_text())
            fit = sum(t["fit_seconds"] or 0 for t in trials)
            rows.append((backend, len(trials), seconds, fit, result.best_value))
    print(f"{args.tune_model} on ml-100k (random 8:1:1, seed 2020), {args.trials} trials, TPE seeded alike; wall "
          "seconds include loading and splitting the data once (and, for Ray, starting the local instance)")
    print("| backend | trials | wall s | trials per hour | sum of fit s | best valid NDCG@10 |")
    print("|---|---:|---:|---:|---:|---:|")
    for backend, n, seconds, fit, best in rows:
        name = "local Optuna (one trial at a time)" if backend == "local" else f"Ray Tune ({args.workers} at once)"
        print(f"| {name} | {n} | {seconds:.1f} | {3600 * n / seconds:.0f} | {fit:.1f} | {best:.4f} |")


def bench_ddp(args: argparse.Namespace) -> None:
    from recstack.cluster import RaySettings, connect
    from recstack.evaluate import evaluate
    from recstack.experiment.config import ModelEntry, load_config
    from recstack.experiment.run import prepare_data
    from recstack.experiment.steps import fit_entry, scoring

    sources = {"bpr-adam": ("neural_cf_ml100k.yaml", "bpr", {"solver": "adam"}),
               "lightgcn": ("neural_cf_ml100k.yaml", "lightgcn", {}),
               "sasrec": ("sequential_ml100k.yaml", "sasrec", {})}
    connect(RaySettings(workers=args.workers))
    print(f"model seeds {args.seed} ... {args.seed + args.seeds - 1}; the split is the config's (seed 2020)")
    print("| model | workers | seed | best epoch / epochs | valid NDCG@10 | test NDCG@10 | fit s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    summary: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for label in args.models:
        file, name, params = sources[label]
        config = load_config(EXAMPLES / file)
        dataset, split = prepare_data(config)
        for seed in range(args.seed, args.seed + args.seeds):
            for workers in (1, args.workers):
                entry = ModelEntry(name=name, params={**params, "workers": workers, "seed": seed}, label=label)
                tick = time.perf_counter()
                fitted = fit_entry(config, entry, dataset, split)
                seconds = time.perf_counter() - tick
                figures = []
                for part in ("valid", "test"):
                    plan = scoring(config, split, part, metrics=["NDCG@10"])
                    figures.append(evaluate(fitted.model, plan.history, plan.truth, **plan.options).metrics["NDCG@10"])
                summary.setdefault((label, workers), []).append((figures[0], figures[1]))
                model = fitted.model
                print(f"| {label} | {workers} | {seed} | {model.best_epoch_} / {len(model.history_)} | {figures[0]:.4f} | "
                      f"{figures[1]:.4f} | {seconds:.0f} |", flush=True)
    print("| model | workers | valid NDCG@10 (mean ± sd) | test NDCG@10 (mean ± sd) |")
    print("|---|---:|---:|---:|")
    for (label, workers), values in summary.items():
        valid, test = np.array(values).T
        sd = (lambda x: float(np.std(x, ddof=1)) if len(x) > 1 else 0.0)
        print(f"| {label} | {workers} | {valid.mean():.4f} ± {sd(valid):.4f} | {test.mean():.4f} ± {sd(test):.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["evaluate", "tune", "ddp"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--nnz", type=int, default=1_000_000, help="evaluate: synthetic events")
    parser.add_argument("--model", default="als", help="evaluate: the model scored")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--tune-model", choices=["itemknn", "lightgcn"], default="lightgcn",
                        help="tune: itemknn (0.2 s fits: overhead shows) or lightgcn (40 epochs, about 10 s per fit)")
    parser.add_argument("--models", nargs="+", default=["bpr-adam", "lightgcn", "sasrec"])
    parser.add_argument("--seeds", type=int, default=1, help="ddp: model seeds per model and worker count")
    parser.add_argument("--seed", type=int, default=2020, help="ddp: the first model seed")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    print_machine(f"settings: Ray local instance with {args.workers} CPUs; each Ray task and trial 1 thread")
    {"evaluate": bench_evaluate, "tune": bench_tune, "ddp": bench_ddp}[args.what](args)


if __name__ == "__main__":
    main()
