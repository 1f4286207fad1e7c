"""KGAT training-epoch time: recstack vs RecBole 1.2.1 on RecBole's own split and graph (issue 17).

RecBole's KGAT runs first, under the peer Python through `run_recbole_dgl.py` (DGL shims; see
there), for `--epochs` epochs of protocol A on ml-100k with `--export`, so the split it trained on
(97,554 interactions: RecBole's knowledge-graph dataset keeps only items linked to the graph) lands in
`WORK/split`. recstack's KGAT then trains on that exported split with the same graph files
(`data.kg_triples`/`kg_links`), RecBole's settings (64-dim embeddings and relations, one 64-unit
bi-interaction layer, message dropout 0.1, Adam at 1e-3, L2 1e-5, batches of 2048 for the CF and the
KG loss, TransR's loss over the KG's own triples as RecBole samples them) and the same thread count.
`--kg-loss-triples ckg` times recstack's default instead (the authors' code: every CKG edge,
interactions and inverses included, about four times the KG steps). Each epoch on both sides is one pass of CF batches, one pass of
KG batches and the attention update; the figure is the median training time per epoch with the
validation passes excluded (RecBole logs them apart; recstack validates only after its last epoch
here). Accuracy is not compared by this script: see `against_recbole.py --models kgat-recbole`.

    export RECSTACK_PEER_PYTHON=/path/to/.peer-venv/bin/python RECSTACK_PEERS_DIR=/path/to/peers
    .venv/bin/python benchmarks/kgat_vs_recbole.py --kg ml-100k.kg ml-100k.link --threads 2 --epochs 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

from machine import print_machine
from peer_env import add_peer_options, resolve_peer

RECBOLE_SETTINGS = {"embedding_size": 64, "kg_embedding_size": 64, "layer_sizes": [64], "aggregator": "bi",
                    "dropout": 0.1, "learning_rate": 1e-3, "reg": 1e-5, "kg_reg": 1e-5, "batch_size": 2048,
                    "kg_batch_size": 2048, "kg_loss_triples": "kg"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_peer_options(parser)
    parser.add_argument("--kg", nargs=2, type=Path, metavar=("TRIPLES", "LINKS"), required=True,
                        help="the recbole wheel's ml-100k.kg and ml-100k.link (RecBole reads the same files)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per side; the first is a warm-up")
    parser.add_argument("--work", type=Path, default=Path("kgat_vs_recbole"))
    parser.add_argument("--kg-loss-triples", choices=("kg", "ckg"), default="kg",
                        help="recstack's TransR triples: the KG's own as RecBole (default), or every CKG edge")
    args = parser.parse_args()
    resolve_peer(parser, args)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is a warm-up)")
    print_machine(f"settings: {args.threads} torch threads on both sides, {args.epochs} epochs each, the first "
                  "a warm-up; medians of the rest")

    args.work.mkdir(parents=True, exist_ok=True)
    split = args.work / "split"
    wrapper = Path(__file__).with_name("run_recbole_dgl.py")
    subprocess.run([args.peer_python, str(wrapper), "--peers-dir", str(args.peers_dir), "--", "--protocol", "A",
                    "--model", "KGAT", "--threads", str(args.threads), "--epochs", str(args.epochs),
                    "--out", str(args.work / "recbole"), "--export", str(split)], check=True,
                   capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": ""})
    theirs = json.loads((args.work / "recbole" / "A_KGAT.json").read_text())
    recbole_epochs = theirs["train_s_per_epoch_all"][1:]

    import torch

    from recstack.experiment.run import prepare_data
    from recstack.experiment.config import parse_config
    from recstack.models.graph.kgat import KGAT

    torch.set_num_threads(args.threads)
    config = parse_config({"data": {"files": {p: str(split / f"{p}.tsv") for p in ("train", "valid", "test")},
                                    "kg_triples": str(args.kg[0]), "kg_links": str(args.kg[1])},
                           "models": [{"name": "kgat"}], "seed": 2020})
    dataset, data_split = prepare_data(config)
    settings = {**RECBOLE_SETTINGS, "kg_loss_triples": args.kg_loss_triples}
    model = KGAT(KGAT.Config(**settings, epochs=args.epochs, eval_every=args.epochs + 1, seed=2020,
                             early_stopping_patience=None))
    model.use_dataset(dataset)
    started = time.perf_counter()
    model.fit(data_split.train, data_split.valid)
    fit_seconds = time.perf_counter() - started
    ours = [entry["seconds"] for entry in model.history_][1:-1]  # the last epoch also validates
    if not ours:
        ours = [entry["seconds"] for entry in model.history_][1:]

    mine, peer = statistics.median(ours), statistics.median(recbole_epochs)
    print(f"split: {theirs['export']}")
    print(f"RecBole 1.2.1 (torch {theirs['versions']['torch']}, {theirs['torch_threads']} threads): "
          f"train s per epoch {', '.join(f'{s:.2f}' for s in theirs['train_s_per_epoch_all'])}")
    print(f"recstack ({torch.get_num_threads()} threads, kg_loss_triples {args.kg_loss_triples}): s per epoch "
          f"{', '.join(str(entry['seconds']) for entry in model.history_)} (fit {fit_seconds:.1f} s)")
    print("| library | median train s per epoch | epochs timed |")
    print("|---|---:|---:|")
    print(f"| recstack | {mine:.2f} | {len(ours)} |")
    print(f"| RecBole 1.2.1 | {peer:.2f} | {len(recbole_epochs)} |")
    print(f"recstack is {peer / mine:.2f}x faster per KGAT epoch")


if __name__ == "__main__":
    main()
