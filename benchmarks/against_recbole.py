"""recstack on the exact split RecBole 1.2.1 produced (protocol A), side by side with RecBole.

First run the peer driver (see ../shared/peers/README.md) with `--export SPLIT_DIR --out RESULTS`
for the models to compare; then:

    .venv/bin/python benchmarks/against_recbole.py --split-dir SPLIT_DIR --recbole-results RESULTS

recstack reads the exported train/valid/test TSV files as a pre-split experiment (the `files:`
data source), trains its models with their defaults, and prints test figures next to RecBole's
for the models both have. Fit seconds are recstack's fit alone and RecBole's `fit_s` (which
includes its per-epoch validation passes).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recstack.experiment.run import run_experiment

PAIRS = {"pop": "Pop", "itemknn": "ItemKNN", "ease": "EASE", "bpr": "BPR", "als": None, "rp3beta": None,
         "userknn": None}
METRICS = ("NDCG@10", "Recall@10", "MRR@10", "Hit@10", "Precision@10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split-dir", type=Path, required=True)
    parser.add_argument("--recbole-results", type=Path, required=True)
    parser.add_argument("--output-dir", type=Path, default=Path("runs"))
    parser.add_argument("--models", nargs="+", default=list(PAIRS))
    args = parser.parse_args()
    config = {
        "data": {"files": {part: str(args.split_dir / f"{part}.tsv") for part in ("train", "valid", "test")}},
        "models": [{"name": name} for name in args.models],
        "ks": [10],
        "seed": 2020,
        "output_dir": str(args.output_dir),
    }
    result = run_experiment(config, progress=False)
    print(f"split fingerprint: {result.split.fingerprint()}  run: {result.run_dir}")
    print("| model | library | " + " | ".join(f"test {m}" for m in METRICS) + " | fit s |")
    print("|---|---|" + "---:|" * (len(METRICS) + 1))
    for name in args.models:
        ours = result.metrics[name]
        print(f"| {name} | recstack | " + " | ".join(f"{ours['test'][m]:.4f}" for m in METRICS)
              + f" | {ours['fit_seconds']:.2f} |")
        peer_name = PAIRS.get(name)
        peer_file = args.recbole_results / f"A_{peer_name}.json"
        if peer_name and peer_file.exists():
            peer = json.loads(peer_file.read_text())
            print(f"| {name} | RecBole 1.2.1 | " + " | ".join(f"{peer['test'][m.lower()]:.4f}" for m in METRICS)
                  + f" | {peer['fit_s']:.2f} |")


if __name__ == "__main__":
    main()
