"""Paired comparisons between two entries of a finished CTR run, overall and on its item slices.

A CTR run (`recstack run`) tests every model against the best one only (DeLong's paired test on the
test rows, and, with `ctr.rare_item_rows`, on the rare- and unseen-item rows). To compare two
other entries, e.g. the semantic-ID model against the item-id model of the same feature ablation
(docs/ctr.md, "Semantic IDs and hashed item ids"), this script reloads both saved models, rebuilds
each one's features on the run's split (same config, same seed, the cached semantic IDs) and prints
AUC and DeLong's paired p on all test rows, the rare-item rows and the unseen-item rows.

    .venv/bin/python benchmarks/ctr_slice_pairs.py RUN_DIR A:B [C:D ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from recstack.data.ctr import make_ctr_split
from recstack.evaluate.ctr import auc, delong_test
from recstack.experiment.config import load_config
from recstack.experiment.run import load_data
from recstack.experiment.semantic_ids import semantic_id_codes
from recstack.models.ctr import CTR_MODELS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a CTR run directory (config.yaml, models/<label>/)")
    parser.add_argument("pairs", nargs="+", help="LABEL_A:LABEL_B, entries of the run")
    args = parser.parse_args()
    config = load_config(args.run / "config.yaml", trust=False)
    dataset = load_data(config)
    entries = {entry.display: entry for entry in config.models}
    pairs = [tuple(pair.split(":", 1)) for pair in args.pairs]
    predictions, masks, label = {}, {}, None
    for name in sorted({name for pair in pairs for name in pair}):
        entry = entries[name]
        fields = config.features_of(entry)
        codes = {f.name: semantic_id_codes(dataset, f.semantic_settings(), cache_dir=config.cache_dir)[0]
                 for f in config.ctr.features if f.name in fields and f.semantic_settings() is not None}
        split = make_ctr_split(dataset, [f.spec() for f in config.ctr.features if f.name in fields],
                               threshold=config.ctr.threshold, ratios=config.ctr.ratios, seed=config.seed,
                               codes=codes, cold_items=config.ctr.cold_items)
        predictions[name] = CTR_MODELS.resolve(entry.name).load(args.run / "models" / name).predict(split.test)
        counts = np.bincount(split.train.item, minlength=dataset.interactions.n_items)[split.test.item]
        below = config.ctr.rare_item_rows or 5
        masks = {"all": np.ones(len(split.test), bool), f"rare (< {below})": counts < below, "unseen": counts == 0}
        label = split.test.label  # the rows depend on the seed only: the same for every entry
    for a, b in pairs:
        for part, mask in masks.items():
            y = label[mask]
            if not 0 < y.sum() < len(y) - 1:
                continue
            print(f"{a} vs {b} [{part}, {int(mask.sum()):,} rows]: AUC {auc(y, predictions[a][mask]):.4f} vs "
                  f"{auc(y, predictions[b][mask]):.4f}, DeLong p {delong_test(y, predictions[a][mask], predictions[b][mask]):.2g}")


if __name__ == "__main__":
    main()
