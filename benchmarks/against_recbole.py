"""recstack on the exact split RecBole 1.2.1 produced (protocol A), side by side with RecBole.

First run the peer driver `run_recbole.py` (in the folder named by RECSTACK_PEERS_DIR, under the
RecBole environment's Python, RECSTACK_PEER_PYTHON; see the peers README there) with
`--export SPLIT_DIR --out RESULTS` for the models to compare; then:

    .venv/bin/python benchmarks/against_recbole.py --split-dir SPLIT_DIR --recbole-results RESULTS [--own-protocol]
    .venv/bin/python benchmarks/against_recbole.py --dataset ml-1m --split-dir SPLIT_DIR --recbole-results RESULTS
    .venv/bin/python benchmarks/against_recbole.py --split-dir SPLIT_DIR --recbole-results RESULTS \
        --models kgat kgat-recbole --kg ml-100k.kg ml-100k.link      # RecBole's KGAT: run_recbole_dgl.py

recstack reads the exported train/valid/test TSV files as a pre-split experiment (the `files:`
data source), trains its models with their defaults and scores them under RecBole's protocol A:
test users ranked from the training part only (`test_history: train`), train + valid items masked
(`peer_protocol.RECBOLE`). It prints the protocol of both sides, then test figures next to
RecBole's for the models both have, with the ratio of NDCG@10 only when the protocols match
(otherwise one line says why there is none). `ease-reg250` and `itemknn-k100` are recstack's EASE
and ItemKNN with RecBole's default settings (EASE reg_weight 250; ItemKNN k 100, shrink 0, plain
cosine), so that what remains between the rows is the libraries. `--own-protocol` adds a second row per model: the
same fitted model scored under recstack's default (test users ranked from train + valid), which
is never compared with RecBole's. Fit seconds are recstack's fit alone and RecBole's `fit_s`
(which includes its per-epoch validation passes).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from machine import print_machine
from peer_protocol import RECSTACK_AS_RECBOLE, ratio_refusal, recbole_protocol, state
from recstack.evaluate import evaluate
from recstack.experiment.compare import Protocol
from recstack.experiment.run import run_experiment
from recstack.experiment.steps import scoring

PAIRS = {"pop": "Pop", "itemknn": "ItemKNN", "itemknn-k100": "ItemKNN", "ease": "EASE", "ease-reg250": "EASE",
         "bpr": "BPR", "als": None, "rp3beta": None, "userknn": None, "lightgcn": "LightGCN", "kgat": "KGAT",
         "kgat-recbole": "KGAT"}
SLOW = ("lightgcn", "kgat", "kgat-recbole")  # minutes each: ask for them with --models
DEFAULT_MODELS = [label for label in PAIRS if label not in SLOW]
# label -> (model, parameters): recstack's model with the RecBole model's default settings
SETTINGS = {"ease-reg250": ("ease", {"reg": 250.0}),
            "itemknn-k100": ("itemknn", {"n_neighbors": 100, "shrink": 0.0, "feature_weighting": "none"}),
            # RecBole's KGAT.yaml and its trainer: one 64-unit layer, batches of 2048 for both losses,
            # TransR on the KG's own triples (the authors' code also samples interactions and inverses),
            # and protocol A's stopping rule (10 epochs without a better validation NDCG@10)
            "kgat-recbole": ("kgat", {"layer_sizes": [64], "batch_size": 2048, "kg_batch_size": 2048,
                                      "kg_loss_triples": "kg", "early_stopping_patience": 10})}
KG_MODELS = ("kgat", "kgat-recbole")
METRICS = ("NDCG@10", "Recall@10", "MRR@10", "Hit@10", "Precision@10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split-dir", type=Path, required=True)
    parser.add_argument("--recbole-results", type=Path, required=True)
    parser.add_argument("--output-dir", type=Path, default=Path("runs"))
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--dataset", default="ml-100k", choices=("ml-100k", "ml-1m"),
                        help="the dataset RecBole ran on (run_recbole.py --dataset): its result files are "
                             "A_<Model>.json for ml-100k and ml-1m_A_<Model>.json for ml-1m")
    parser.add_argument("--kg", nargs=2, type=Path, metavar=("TRIPLES", "LINKS"),
                        help="the knowledge graph RecBole's KG models read (<dataset>.kg and <dataset>.link "
                             "from the recbole wheel); needed for kgat")
    parser.add_argument("--own-protocol", action="store_true",
                        help="add rows scored under recstack's default protocol (never compared with RecBole)")
    args = parser.parse_args()
    print_machine("settings: recstack's fit seconds on this machine with its default threads; RecBole's fit_s are "
                  "read from its result files (measured by run_recbole.py with its own --threads)")
    data = {"files": {part: str(args.split_dir / f"{part}.tsv") for part in ("train", "valid", "test")}}
    if any(name in KG_MODELS for name in args.models):
        if args.kg is None:
            parser.error("kgat reads a knowledge graph: pass --kg TRIPLES LINKS (e.g. the recbole wheel's "
                         "ml-100k.kg and ml-100k.link, as RecBole's KGAT read them)")
        data.update(kg_triples=str(args.kg[0]), kg_links=str(args.kg[1]))
    config = {
        "data": data,
        "models": [{"name": SETTINGS[label][0], "params": SETTINGS[label][1], "label": label} if label in SETTINGS
                   else {"name": label} for label in args.models],
        "ks": [10],
        "seed": 2020,
        "output_dir": str(args.output_dir),
        **RECSTACK_AS_RECBOLE["A"],
    }
    result = run_experiment(config, progress=False)
    ours = Protocol.of_run(result.run_dir)
    prefix = "" if args.dataset == "ml-100k" else f"{args.dataset}_"
    peers = {name: json.loads(path.read_text()) for name in args.models
             if PAIRS.get(name) and (path := args.recbole_results / f"{prefix}A_{PAIRS[name]}.json").exists()}
    for name, peer in peers.items():
        if peer.get("dataset", "ml-100k") != args.dataset:
            parser.exit(2, f"error: RecBole's {PAIRS[name]} result ran on {peer.get('dataset')!r}, not "
                           f"{args.dataset!r}: pass --dataset {peer.get('dataset')}\n")
    theirs = {name: recbole_protocol(peer) for name, peer in peers.items()}
    print(f"split fingerprint: {result.split.fingerprint()}  run: {result.run_dir}")
    print(state("recstack", ours))
    for protocol in dict.fromkeys(theirs.values()):
        print(state("RecBole 1.2.1", protocol))
    own_rows, own = {}, None
    if args.own_protocol:
        own_config = result.config.model_copy(update={"test_history": "train_valid"})
        own = Protocol.of_config(own_config, result.split)
        print(state("recstack's default (the 'recstack, own protocol' rows)", own))
        plan = scoring(own_config, result.split, "test", metrics=list(METRICS))
        own_rows = {name: evaluate(result.models[name], plan.history, plan.truth, **plan.options).metrics
                    for name in args.models}

    refusals = []
    print("| model | library | " + " | ".join(f"test {m}" for m in METRICS) + " | NDCG@10 / RecBole | fit s |")
    print("|---|---|" + "---:|" * (len(METRICS) + 2))
    for name in args.models:
        figures = result.metrics[name]
        peer = peers.get(name)
        ratio = "-"
        if peer is not None:
            refusal = ratio_refusal(("recstack", ours), ("RecBole 1.2.1", theirs[name]))
            if refusal is None:
                ratio = f"{figures['test']['NDCG@10'] / peer['test']['ndcg@10']:.3f}"
            else:
                refusals.append(refusal)
        print(f"| {name} | recstack | " + " | ".join(f"{figures['test'][m]:.4f}" for m in METRICS)
              + f" | {ratio} | {figures['fit_seconds']:.2f} |")
        if name in own_rows:
            if peer is not None:
                refusal = ratio_refusal(("recstack's default", own), ("RecBole 1.2.1", theirs[name]))
                if refusal is not None:
                    refusals.append(refusal)
            print(f"| {name} | recstack, own protocol | " + " | ".join(f"{own_rows[name][m]:.4f}" for m in METRICS)
                  + " | - | |")
        if peer is not None:
            print(f"| {name} | RecBole 1.2.1 | " + " | ".join(f"{peer['test'][m.lower()]:.4f}" for m in METRICS)
                  + f" | | {peer['fit_s']:.2f} |")
    for refusal in dict.fromkeys(refusals):  # one line per distinct reason
        print(refusal)


if __name__ == "__main__":
    main()
