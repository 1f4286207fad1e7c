"""Cost of generative retrieval: users/s of TIGER's beam search and of its projection head, each as
a ratio to dense scoring + top-k (SASRec) over the same catalogue.

Three recommenders rank the top 10 for the same users of a leave-last-one-out split through the
evaluator's `rank` (history masked), one after another in one process with the same threads:
- dense (the reference): SASRec, a transformer over the history, then <h_u, E_i> for every item
  and a top-k: the usual dense retrieval path;
- TIGER beam: the encoder over the history's semantic-ID tokens, then a beam search over the code
  prefix trie (`top_k`), beam width 2k;
- TIGER projection: the same encoder and the first decoder state projected onto every item's code
  embedding, one matrix product and a top-k (Lite-LLM4Rec's head).
Inference cost does not depend on how well a model is trained, so every model trains one short
epoch (accuracy is measured elsewhere: examples/generative_ml100k.yaml). Datasets: ml-100k
(1,682 items) and a synthetic power-law log with a 100,000-item catalogue. Figures are users per
second, best of `--repeats` timed passes after one warm-up pass.

    .venv/bin/python benchmarks/generative_cost.py [--threads 2] [--users 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from machine import print_machine

from recstack.data.datasets import load_dataset
from recstack.data.synthetic import power_law_interactions
from recstack.evaluate.evaluator import rank
from recstack.models import build
from recstack.split import make_split

ONE_EPOCH = {"epochs": 1, "early_stopping_patience": None, "verbose": False, "device": "cpu"}


def users_per_second(model, users: np.ndarray, history, k: int, repeats: int) -> float:
    rank(model, users[:16], history, k)  # warm-up: lazy weight rebuilds, allocator, threads
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        rank(model, users, history, k)
        best = min(best, time.perf_counter() - started)
    return len(users) / best


def measure(name: str, data, n_users: int, k: int, repeats: int, big: bool) -> dict:
    split = make_split(data, "leave_last", seed=0, k=1)
    history = split.history("test")
    rng = np.random.default_rng(0)
    candidates = np.flatnonzero(np.diff(split.test.matrix().indptr) > 0)
    users = np.sort(rng.choice(candidates, size=min(n_users, len(candidates)), replace=False)).astype(np.int32)
    # a full-softmax epoch over 100k items would need a (slots x 100k) logit matrix: sample instead
    dense_params = {**ONE_EPOCH, "embedding_size": 128, "n_heads": 4,
                    **({"loss": "sampled_softmax", "n_negatives": 256} if big else {})}
    tiger = {**ONE_EPOCH, "samples_per_user": 1}
    models = {
        "dense (SASRec)": build("sasrec", dense_params).fit(split.train),
        "TIGER beam": build("tiger", {**tiger, "decoding": "beam"}).fit(split.train),
        "TIGER projection": build("tiger", {**tiger, "decoding": "projection"}).fit(split.train),
    }
    speeds = {label: users_per_second(model, users, history, k, repeats) for label, model in models.items()}
    reference = speeds["dense (SASRec)"]
    return {"dataset": name, "n_items": int(data.n_items), "users": int(len(users)), "k": k,
            "users_per_s": speeds, "ratio_to_dense": {label: s / reference for label, s in speeds.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--users", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--synthetic-items", type=int, default=100_000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print_machine(f"settings: {args.threads} torch threads (set_num_threads)")
    rows = [measure("ml-100k", load_dataset("ml-100k").interactions, args.users, args.k, args.repeats, False)]
    nnz = 10 * args.synthetic_items  # 10 events per item on average, a user per 100 events
    synthetic = power_law_interactions(nnz, seed=0, items_per_event=args.synthetic_items / nnz)
    rows.append(measure(f"synthetic {args.synthetic_items:,} items", synthetic, args.users, args.k,
                        args.repeats, True))
    for row in rows:
        print(json.dumps(row))
    print("\n| data | items | dense users/s | beam users/s | beam / dense | projection users/s | projection / dense |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        s, r = row["users_per_s"], row["ratio_to_dense"]
        print(f"| {row['dataset']} | {row['n_items']:,} | {s['dense (SASRec)']:,.0f} | {s['TIGER beam']:,.0f} | "
              f"{r['TIGER beam']:.3f}x | {s['TIGER projection']:,.0f} | {r['TIGER projection']:.2f}x |")


if __name__ == "__main__":
    main()
