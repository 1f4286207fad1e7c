"""Paired tests between CTR models trained in separate runs of one config (`recstack run --only`).

A CTR run tests its models against each other (DeLong on AUC, a paired t-test on per-user AUC), but a
leaderboard trained one model per process (so that a long run loses one model, not all, when it is
stopped) has one model per run directory. This script rebuilds the config's split once, checks that
every run's `split_fingerprint` is that split's, loads each run's saved models, predicts the test
rows and prints the leaderboard with both tests against the best model (Holm-adjusted across the
comparisons). Configs with semantic-ID fields are refused (their codes are computed inside a run).
Runs written since CTR runs keep their test predictions compare with `recstack compare RUN...` (the
same tests, nothing re-predicted); this script is for the runs written before.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ctr_runs_paired.py runs/ml-1m-*/
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment of a family of p-values."""
    order = sorted(pvalues, key=pvalues.get)
    adjusted, running = {}, 0.0
    for rank, label in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * pvalues[label]))
        adjusted[label] = running
    return adjusted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="CTR run directories of one config")
    args = parser.parse_args()

    from recstack.data.ctr import make_ctr_split
    from recstack.evaluate.ctr import ctr_metrics, delong_test, per_user_auc
    from recstack.evaluate.stats import paired_test
    from recstack.experiment.ctr import parse_ctr_config
    from recstack.experiment.run import load_data
    from recstack.models.ctr import CTR_MODELS

    manifests = {}
    for run in args.runs:
        path = run / "manifest.json"
        if not path.is_file():
            sys.exit(f"{run}: no manifest.json; give run directories that `recstack run` wrote")
        manifests[run] = json.loads(path.read_text())
        if manifests[run].get("task") != "ctr":
            sys.exit(f"{run}: not a CTR run (task {manifests[run].get('task')!r})")
    fingerprints = {m["split_fingerprint"] for m in manifests.values()}
    if len(fingerprints) != 1:
        sys.exit(f"the runs have {len(fingerprints)} different split fingerprints; paired tests need one split")
    config = parse_ctr_config(yaml.safe_load((args.runs[0] / "config.yaml").read_text()))
    if any(f.kind == "semantic_id" for f in config.ctr.features):
        sys.exit("semantic_id fields: their codes are computed inside a run; test such models within one run")
    dataset = load_data(config)
    split = make_ctr_split(dataset, [f.spec() for f in config.ctr.features], threshold=config.ctr.threshold,
                           ratios=config.ctr.ratios, seed=config.split_seed(config.run_seeds[0]),
                           cold_items=config.ctr.cold_items)
    if split.fingerprint() != fingerprints.pop():
        sys.exit("the rebuilt split's fingerprint differs from the runs'; was the data or the code changed?")

    test = split.test
    predictions, metrics, users = {}, {}, {}
    for run in args.runs:
        for folder in sorted((run / "models").iterdir()):
            label = folder.name
            if label in predictions:
                sys.exit(f"model {label!r} is in two of the runs; give each label once")
            name = json.loads((run / "metrics.json").read_text())[label]["model"]
            model = CTR_MODELS.resolve(name).load(folder)
            p = model.predict(test).astype(np.float64)
            predictions[label], metrics[label] = p, ctr_metrics(test.label, p, test.user)
            users[label] = per_user_auc(test.label, p, test.user)
    best_auc = max(metrics, key=lambda label: metrics[label]["AUC"])
    best_gauc = max(metrics, key=lambda label: metrics[label]["gAUC"])
    auc_p = holm({label: delong_test(test.label, predictions[label], predictions[best_auc])
                  for label in metrics if label != best_auc})
    gauc_p = holm({label: paired_test(users[label].auc, users[best_gauc].auc, "t") for label in metrics
                   if label != best_gauc})
    print(f"split {split.fingerprint()}: {len(test):,} test rows; p-values Holm-adjusted; AUC: DeLong's paired test "
          f"against {best_auc}; gAUC: paired t-test on per-user AUC against {best_gauc}\n")
    print("| model | AUC | LogLoss | gAUC | Calibration | AUC p vs best | gAUC p vs best |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label in sorted(metrics, key=lambda label: -metrics[label]["AUC"]):
        m = metrics[label]
        ap = "-" if label == best_auc else f"{auc_p[label]:.2g}"
        gp = "-" if label == best_gauc else f"{gauc_p[label]:.2g}"
        print(f"| {label} | {m['AUC']:.4f} | {m['LogLoss']:.4f} | {m['gAUC']:.4f} | {m['Calibration']:.3f} | {ap} | {gp} |")


if __name__ == "__main__":
    main()
