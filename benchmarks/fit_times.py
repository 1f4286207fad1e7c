"""Fit time of the non-neural models on ml-100k (random 8:1:1 split, seed 2020), best of N.

    .venv/bin/python benchmarks/fit_times.py [--models ease itemknn ...] [--repeats 3]

With `--recbole-results DIR` it also prints the ratio to RecBole 1.2.1's fit time for the same
models, read from the JSON files that the peer driver run_recbole.py (in RECSTACK_PEERS_DIR) wrote
into DIR (RecBole's training epochs are summed without its validation passes; see BENCHMARKS.md for
how it was run). The machine (CPU, BLAS, threads) is printed first.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from machine import print_machine
from recstack.data.datasets import load_dataset
from recstack.evaluate import evaluate
from recstack.models import build
from recstack.split import make_split

RECBOLE_NAMES = {"ease": "EASE", "itemknn": "ItemKNN"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ease", "itemknn", "userknn", "rp3beta", "als", "pop"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--recbole-results", type=Path, default=None)
    args = parser.parse_args()
    print_machine("settings: each model's default threads (the thread counts above are those in force at start)")
    data = load_dataset("ml-100k")
    split = make_split(data.interactions, "random", seed=2020, ratios=(0.8, 0.1, 0.1))
    print("compared: fit seconds only. The valid NDCG@10 column is recstack's alone (its own split, train history, "
          "train items masked) and is compared with nothing; RecBole's seconds are its training epochs on its "
          "own split of the same data (protocol A)")
    print(f"| model | recstack fit s (best of {args.repeats}) | valid NDCG@10 | RecBole train s | RecBole / recstack |")
    print("|---|---:|---:|---:|---:|")
    for name in args.models:
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            model = build(name).fit(split.train, split.valid)
            times.append(time.perf_counter() - start)
        ndcg = evaluate(model, split.history("valid"), split.valid, metrics=["NDCG@10"]).metrics["NDCG@10"]
        peer, ratio = "", ""
        peer_file = args.recbole_results and args.recbole_results / f"A_{RECBOLE_NAMES.get(name)}.json"
        if name in RECBOLE_NAMES and peer_file and peer_file.exists():
            peer_fit = sum(json.loads(peer_file.read_text())["train_s_per_epoch_all"])
            peer, ratio = f"{peer_fit:.3f}", f"{peer_fit / min(times):.2f}"
        print(f"| {name} | {min(times):.3f} | {ndcg:.4f} | {peer} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
