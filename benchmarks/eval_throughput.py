"""Full-ranking evaluation throughput of an MF-shaped model vs raw torch.mm + topk.

For each catalogue size, both sides score the same users against the same factors (d=64) in
the same user blocks and take the top k=10. The reference does only `torch.mm` + `torch.topk`;
recstack's `evaluate` also masks each user's history, looks up hits and computes six metrics.
Reported: users/s of each and the ratio recstack / reference (goal >= 0.8).

    .venv/bin/python benchmarks/eval_throughput.py [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from recstack.data.interactions import Interactions, Vocab
from recstack.evaluate import evaluate
from recstack.evaluate.evaluator import block_size_for

SHAPES = [(1_682, 20_000), (50_000, 5_000), (1_000_000, 1_000)]  # (n_items, n_users scored)


class MatrixFactorization:
    """The scoring half of any MF model: s(u, i) = <p_u, q_i>."""

    def __init__(self, user_factors: np.ndarray, item_factors: np.ndarray) -> None:
        self.user_factors, self.item_factors = user_factors, item_factors

    def score(self, users, history, items=None):
        return self.user_factors[users] @ self.item_factors.T


def make_case(n_items: int, n_users: int, dim: int, rng: np.random.Generator):
    users, items = Vocab(np.arange(n_users), "user"), Vocab(np.arange(n_items), "item")
    # 20 history events and 1-5 test events per user, uniform over the catalogue
    hist_user = np.repeat(np.arange(n_users), 20)
    history = Interactions(hist_user, rng.integers(0, n_items, len(hist_user)), users, items)
    n_test = rng.integers(1, 6, n_users)
    test_user = np.repeat(np.arange(n_users), n_test)
    test = Interactions(test_user, rng.integers(0, n_items, len(test_user)), users, items)
    model = MatrixFactorization(
        rng.standard_normal((n_users, dim), dtype=np.float32), rng.standard_normal((n_items, dim), dtype=np.float32)
    )
    return model, history, test


def reference(model: MatrixFactorization, n_users: int, block: int, k: int) -> float:
    user_factors = torch.from_numpy(model.user_factors)
    item_factors_t = torch.from_numpy(model.item_factors).T
    start = time.perf_counter()
    for lo in range(0, n_users, block):
        scores = torch.mm(user_factors[lo:lo + block], item_factors_t)
        torch.topk(scores, k, dim=1)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows = []
    for n_items, n_users in SHAPES:
        model, history, test = make_case(n_items, n_users, args.dim, rng)
        block = block_size_for(n_items)
        ours, ref = [], []
        for _ in range(args.repeats):  # interleave so both see the same machine state
            start = time.perf_counter()
            result = evaluate(model, history, test, ks=[args.k])
            ours.append(time.perf_counter() - start)
            ref.append(reference(model, n_users, block, args.k))
        row = {
            "n_items": n_items, "n_users": n_users, "block_users": block,
            "recstack_users_per_s": n_users / min(ours), "torch_mm_topk_users_per_s": n_users / min(ref),
            "ratio": min(ref) / min(ours), "evaluated": result.protocol["n_users_evaluated"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| items | users | block | recstack users/s | torch.mm+topk users/s | ratio |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n_items']:,} | {r['n_users']:,} | {r['block_users']} | {r['recstack_users_per_s']:,.0f} "
              f"| {r['torch_mm_topk_users_per_s']:,.0f} | {r['ratio']:.2f}x |")


if __name__ == "__main__":
    main()
