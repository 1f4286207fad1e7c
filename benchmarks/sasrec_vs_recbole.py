"""SASRec: wall-clock time to a fixed validation NDCG@10 vs RecBole 1.2.1, under RecBole's protocol.

The target is the best validation NDCG@10 that RecBole's SASRec reached on its protocol-B split
(leave-one-out by time, max 50 items, full-softmax cross-entropy), read from the peer driver's
result file. recstack's SASRec trains on the identical split (the driver's exported TSV files,
row order kept) with RecBole's settings where both libraries have them: 64 dims, 2 blocks,
2 heads, dropout 0.5, learning rate 1e-3, feed-forward width 256, 50 items, CE loss, the same
threads. Differences that remain: recstack trains on windows of each user's sequence (every slot
a target, batch 128 windows; `--train-stride S` learns only each window's newest S slots so that
every target reads at least 51 - S events) where RecBole trains on every prefix as a separate
example (batch 2048 prefixes; `--train-stride 1` or `--train-windows prefixes --batch-size 2048`
is the same augmentation), and the blocks are laid out as the SASRec authors' code has them
(layer norm on the queries only, no attention output projection) where RecBole uses a post-norm
Transformer block with GELU.

Protocol: RecBole 1.2.1 does not mask already-seen items for sequential models, and its test input
is the sequence before the target (train + valid). recstack is scored the same way by default here
(validation during training, hence early stopping and the per-epoch NDCG@10, and the test figure:
`mask_history` off, test history train + valid). The script prints the protocol of both sides and
refuses, with one line, to print the time ratio or compare test figures when they differ
(`--recstack-protocol own` scores recstack masked, its default, to show its own figures only).

Time to target = the training and validation seconds up to the first epoch whose validation
NDCG@10 reaches the target; RecBole's is the same sum up to its best epoch (its per-epoch
training times plus one validation pass per epoch). Users/s on the test part are printed for
both, without a ratio: RecBole's `test_eval_s` also loads its best checkpoint from disk, so the
two figures are not the same work.

    "$RECSTACK_PEER_PYTHON" "$RECSTACK_PEERS_DIR/run_recbole.py" --protocol B --model SASRec --threads 2 \
        --out peer_results --export splitB
    .venv/bin/python benchmarks/sasrec_vs_recbole.py --split-dir splitB \
        --recbole-result peer_results/<the SASRec result>.json --threads 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from machine import print_machine
from peer_protocol import ratio_refusal, recbole_protocol, state
from recstack.experiment.compare import Protocol

# the settings the bar fixes for both sides (CE loss, 50 items, 2 blocks, 64 dims)
SHARED = {"embedding_size": 64, "n_layers": 2, "max_seq_len": 50, "loss": "ce"}
# --settings recbole: also RecBole's defaults where recstack has the same knob (2 heads, dropout 0.5, lr 1e-3,
# feed-forward width 256)
RECBOLE_DEFAULTS = {"n_heads": 2, "dropout": 0.5, "learning_rate": 1e-3, "ffn_size": 256}
SETTINGS = {**SHARED, **RECBOLE_DEFAULTS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split-dir", type=Path, required=True)
    parser.add_argument("--recbole-result", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--settings", choices=["recbole", "recstack"], default="recbole",
                        help="recbole: recstack's SASRec with RecBole's heads, dropout and learning rate too; recstack: "
                             "recstack's defaults for everything but the shared CE loss, 50 items, 2 blocks, 64 dims")
    parser.add_argument("--train-windows", choices=["sliding", "latest", "prefixes"], default=None,
                        help="recstack's training windows (default: its default, sliding)")
    parser.add_argument("--train-stride", type=int, default=None,
                        help="recstack's sliding-window stride (default: max_seq_len; 1 = every prefix)")
    parser.add_argument("--ffn-size", type=int, default=None, help="recstack's feed-forward width (default: the settings')")
    parser.add_argument("--seed", type=int, default=None, help="recstack's seed (default: the model's)")
    parser.add_argument("--verbose", action="store_true", help="print recstack's training log, epoch by epoch")
    parser.add_argument("--batch-size", type=int, default=None, help="recstack's rows per update (default: its own)")
    parser.add_argument("--recbole-epoch-time", choices=["measured", "fastest"], default="measured",
                        help="measured: RecBole's own epoch times; fastest: every epoch up to its best counted at its "
                             "fastest epoch's time (a lower bound for RecBole, for a peer run that other jobs slowed)")
    parser.add_argument("--recstack-protocol", choices=["recbole", "own"], default="recbole",
                        help="recbole: no masking (RecBole's protocol B); own: recstack's default, history masked")
    args = parser.parse_args()

    import torch

    from recstack.evaluate import evaluate
    from recstack.models import build
    from recstack.split.files import split_from_files
    from recstack.train.options import FitOptions

    torch.set_num_threads(args.threads)
    peer = json.loads(args.recbole_result.read_text())
    mask = args.recstack_protocol == "own"
    ours = Protocol(mask_history=mask, test_history="train + valid", test_masked="train + valid" if mask else "none")
    theirs = recbole_protocol(peer)
    print_machine(f"settings: recstack with {args.threads} torch threads; RecBole's times read from "
                  f"{args.recbole_result.name}, run with {peer.get('torch_threads')} torch threads")
    print(state("recstack", ours))
    print(state("RecBole 1.2.1", theirs))
    refusal = ratio_refusal(("recstack", ours), ("RecBole 1.2.1", theirs), "a time-to-accuracy ratio")
    target = peer["best_valid_ndcg10"]
    best_epoch = peer["best_epoch"]
    epochs = peer["train_s_per_epoch_all"][:best_epoch]
    if args.recbole_epoch_time == "fastest":
        epochs = [min(peer["train_s_per_epoch_all"])] * best_epoch
    peer_time = sum(epochs) + best_epoch * peer["mean_valid_s_per_pass"]

    # RecBole's sequence order (the exported row order), not a re-sort by timestamp
    split = split_from_files(*(args.split_dir / f"{part}.tsv" for part in ("train", "valid", "test")), order="file")
    settings = dict(SETTINGS if args.settings == "recbole" else SHARED)
    if args.train_windows:
        settings["train_windows"] = args.train_windows
    if args.ffn_size:
        settings["ffn_size"] = args.ffn_size
    if args.seed is not None:
        settings["seed"] = args.seed
    if args.train_stride:
        settings["train_stride"] = args.train_stride
    if args.batch_size:
        settings["batch_size"] = args.batch_size
    print(f"recstack SASRec settings: {settings}")
    model = build("sasrec", {**settings, "epochs": args.max_epochs, "verbose": args.verbose, "device": "cpu"})
    started = time.perf_counter()
    model.fit(split.train, split.valid, options=FitOptions(mask_history=mask))  # early stopping under `ours`
    fit_s = time.perf_counter() - started
    elapsed, reached_at = 0.0, None
    for entry in model.history_:
        elapsed += entry["seconds"]
        if entry["NDCG@10"] is not None and entry["NDCG@10"] >= target:
            reached_at = (entry["epoch"], elapsed)
            break
    started = time.perf_counter()
    result = evaluate(model, split.history("test"), split.test, metrics=["NDCG@10", "Hit@10"], mask_history=mask)
    eval_s = time.perf_counter() - started
    users = len(result.users)

    row = {
        "recstack_protocol": ours.describe(), "recbole_protocol": theirs.describe(),
        "recstack_best_valid_ndcg10": max(e["NDCG@10"] for e in model.history_ if e["NDCG@10"] is not None),
        "recstack_fit_s": fit_s, "recstack_test_ndcg10": result.metrics["NDCG@10"],
        "recstack_users_per_s": users / eval_s, "recbole_users_per_s": users / peer["test_eval_s"],
        "threads": args.threads, "recbole_threads": peer.get("torch_threads"), "recstack_settings": settings,
        "recstack_best_epoch": model.best_epoch_, "recstack_epochs_run": len(model.history_),
    }
    if refusal is None:  # RecBole's figures and the time to its accuracy mean something only on its protocol
        row.update({"target_valid_ndcg10": target, "recbole_best_epoch": best_epoch,
                    "recbole_time_to_target_s": peer_time, "recbole_epoch_time": args.recbole_epoch_time, "recbole_time_capped": peer.get("time_capped"),
                    "recbole_test_ndcg10": peer["test"].get("ndcg@10"),
                    "recstack_epoch_reached": reached_at[0] if reached_at else None,
                    "recstack_time_to_target_s": reached_at[1] if reached_at else None})
        if reached_at:
            row["time_to_target_speedup"] = peer_time / reached_at[1]
    print(json.dumps(row, indent=1))
    if refusal is not None:
        print(refusal)


if __name__ == "__main__":
    main()
