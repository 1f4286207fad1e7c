"""LLM candidate scoring: the history prefix encoded once (KV cache) vs independent prompts.

One ml-100k user's pointwise ranking prompt (their `--history` most recent titles) and `--candidates`
candidate titles, scored by SmolLM2-135M-Instruct (`recstack.llm.LocalLM`, float32, CPU):
- shared: the prefix runs once, the candidates run as one batch on copies of its key/value cache;
- independent, batched: every candidate's whole prompt (prefix + title) in one padded batch;
- independent, one by one: every whole prompt alone (what a client of a plain completion API does).
All three score the same token sequences, and the script checks that their scores agree (float
tolerance) before printing any time. Median of `--repeats` after one warm-up.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/llm_prefix_reuse.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from machine import print_machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--history", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="smollm2")
    args = parser.parse_args()

    import torch

    from recstack.data.datasets import load_dataset
    from recstack.llm import LocalLM
    from recstack.llm.prompts import rank_prefix_messages

    torch.set_num_threads(args.threads)
    print_machine(f"torch threads {args.threads}")
    dataset = load_dataset("ml-100k")
    titles = dataset.item_titles()
    log = dataset.interactions
    user = int(np.argmax(log.user_counts()))  # a long history, so the prefix is full length
    recent = log.item[log.indptr[user + 1] - args.history:log.indptr[user + 1]]
    rng = np.random.default_rng(0)
    candidates = [str(titles[i]) for i in rng.choice(log.n_items, args.candidates, replace=False)]

    lm = LocalLM(args.model, max_batch=args.candidates)
    prefix = lm.render(rank_prefix_messages([str(titles[i]) for i in recent]))
    print(f"prefix {lm.count_tokens(prefix)} tokens; {args.candidates} candidates, "
          f"{np.mean([lm.count_tokens(c) for c in candidates]):.1f} tokens each on average")

    def shared():
        return lm.continuation_logprobs(prefix, candidates)

    def batched():
        return lm.continuation_logprobs(prefix, candidates, share_prefix=False)

    def one_by_one():
        return np.concatenate([lm.continuation_logprobs(prefix, [c], share_prefix=False) for c in candidates])

    reference = shared()
    for name, run in (("independent, batched", batched), ("independent, one by one", one_by_one)):
        np.testing.assert_allclose(run(), reference, rtol=1e-4, atol=1e-3, err_msg=name)
    timings = {}
    for name, run in (("shared prefix (KV cache)", shared), ("independent, batched", batched),
                      ("independent, one by one", one_by_one)):
        run()
        seconds = []
        for _ in range(args.repeats):
            began = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - began)
        timings[name] = statistics.median(seconds)
    base = timings["shared prefix (KV cache)"]
    print("| scoring | seconds per user | shared prefix is faster by |")
    print("|---|---:|---:|")
    for name, seconds in timings.items():
        print(f"| {name} | {seconds:.3f} | {seconds / base:.1f}x |")


if __name__ == "__main__":
    main()
