"""recstack's FM, DeepFM and AutoInt+ against RecBole 1.2.1's context-aware models, on RecBole's own split.

RecBole's protocol C (`../shared/peers/run_recbole.py --protocol C`): every rating a row, label
rating >= 4, a random 8:1:1 split over all rows (seed 2020), pointwise AUC and LogLoss, early stopping
on validation AUC with patience 10 (`stopping_step`), Adam at 1e-3, batch 2048, at most 300 epochs,
RecBole's default sizes per model. The script runs RecBole under the peer Python with `--export`,
reads the exact rows RecBole trained, validated and tested on, and trains recstack on those rows
(`make_ctr_split(parts=...)`) with the same settings.

The fields, like for like: RecBole 1.2.1 embeds the token fields of the loaded columns and drops a
float field unless `numerical_features` names it (empty by default). In the ml-1m atomic files age,
occupation and release_year are floats, so RecBole's models read user_id, item_id, gender and genre,
the genre string as one token. recstack's first row reads exactly those four fields; a second row
(`--own-fields`) adds what recstack's own config reads (age, occupation, year in 8 buckets, genres as
a multi-valued field) to show what the dropped fields are worth. Vocabularies: recstack's from the
training rows (an unseen value is an OOV id), RecBole's over the whole file (an unseen value keeps
its untrained initial vector); on ml-1m's split 19 validation and 12 test rows have an item without a
training row, every user has one.

Dropout, like for like: RecBole's MLPLayers put dropout before each linear layer of the DNN, so the
field embeddings entering it are dropped too; recstack's default puts it after each activation (the
papers' code, FuxiCTR, DeepCTR). The DNN models run with `dropout_position: before_linear` here
(`--dropout-position after_activation` for recstack's default). RecBole's AutoInt also drops
attention weights (p 0.2), which recstack's AutoInt has no setting for.

    .venv/bin/python benchmarks/ctr_vs_recbole.py --data ~/.cache/recstack --dataset ml-1m \\
        --peer-python /path/to/peer-venv/bin/python --peers-dir ../shared/peers --threads 1 \\
        --work /tmp/ctr_vs_recbole --own-fields

An epoch is one training pass plus the validation pass after it, on both sides (fit seconds over
epochs). Inference rows/s: recstack's `predict` over the test rows; RecBole's test evaluation (it
reloads the best checkpoint first, a few milliseconds here).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from machine import print_machine

PEER_VARIABLE = "RECSTACK_RECBOLE_PYTHON"
# recstack model -> (RecBole model, recstack parameters equal to RecBole 1.2.1's defaults for it)
SHARED = {"embedding_size": 10, "batch_size": 2048, "learning_rate": 1e-3, "epochs": 300,
          "early_stopping_patience": 10, "reg": 0.0}
MODELS = {
    "fm": ("FM", {}),
    "deepfm": ("DeepFM", {"hidden_units": [128, 128, 128], "dropout": 0.2}),
    # RecBole's AutoInt has a DNN beside the attention (the paper's AutoInt+) and a first-order term;
    # its attention_size 16 is split over 2 heads: 8 per head here
    "autoint+": ("AutoInt", {"hidden_units": [128, 128], "dropout": 0.2, "n_layers": 3, "n_heads": 2,
                             "attention_size": 8, "residual": True}),
}
DNN_MODELS = ("deepfm", "autoint+")  # their DNN's dropout placement follows --dropout-position


def split_sha1(pairs: list[tuple[str, str]]) -> str:
    """The digest RecBole's exporter writes to counts.json for one part (sorted raw user/item pairs)."""
    return hashlib.sha1("\n".join(f"{u}\t{i}" for u, i in sorted(pairs)).encode()).hexdigest()


def read_part(path: Path) -> list[tuple[str, str]]:
    with path.open() as handle:
        handle.readline()
        return [tuple(line.rstrip("\n").split("\t")[:2]) for line in handle]


def run_recbole(model: str, args, split_dir: Path, epochs: int | None = None) -> dict:
    out_dir = args.work / ("recbole" if epochs is None else "recbole_timing")
    result = out_dir / f"{args.dataset}_C_{model}.json"
    if args.reuse and epochs is None and result.is_file():
        return json.loads(result.read_text())
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": ""}
    command = [args.peer_python, str(args.peers_dir / "run_recbole.py"), "--protocol", "C", "--dataset", args.dataset,
               "--data-path", str(args.data), "--model", model, "--threads", str(args.threads),
               "--out", str(out_dir), "--export", str(split_dir)] + ([] if epochs is None else ["--epochs", str(epochs)])
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=args.work)
    if done.returncode != 0:
        sys.exit(f"RecBole {model} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(result.read_text())


def recstack_params(name: str, dropout_position: str) -> dict:
    """recstack's settings for `name`: RecBole's defaults, and the DNN's dropout at `dropout_position`."""
    return {**MODELS[name][1], **({"dropout_position": dropout_position} if name in DNN_MODELS else {})}


def fit_recstack(name: str, params: dict, split, threads: int, seed: int, epochs: int | None = None) -> dict:
    import torch

    from recstack.evaluate.ctr import auc, log_loss
    from recstack.models.ctr import build_ctr

    torch.set_num_threads(threads)
    capped = {} if epochs is None else {"epochs": epochs, "early_stopping_patience": None}
    model = build_ctr(name, {**SHARED, **params, "seed": seed, **capped})
    wall = time.perf_counter()
    model.fit(split.train, split.valid)
    fit_wall = time.perf_counter() - wall
    out = {"epochs": len(model.history_), "best_epoch": int(model.best_epoch_), "fit_s": fit_wall}
    for part in ("valid", "test"):
        data = getattr(split, part)
        started = time.perf_counter()
        p = model.predict(data).astype(np.float64)
        seconds = time.perf_counter() - started
        out[part] = {"AUC": auc(data.label, p), "LogLoss": log_loss(data.label, p)}
        if part == "test":
            out["predict_rows_per_s"] = len(data) / seconds
    return out


def timing(args, peers: dict, split) -> None:
    """Seconds per epoch of both sides, each trained exactly `--timing-epochs` epochs on the same rows."""
    print(f"\nspeed: {args.timing_epochs} epochs each (a training pass plus a validation pass), no early stopping, "
          f"{args.threads} torch thread(s), RecBole's fields, one process at a time\n")
    print("| model | RecBole 1.2.1 s / epoch | recstack s / epoch | recstack faster by |")
    print("|---|---:|---:|---:|")
    table = {}
    for name in args.models:
        print(f"recstack {name} ...", file=sys.stderr, flush=True)
        ours = fit_recstack(name, recstack_params(name, args.dropout_position), split, args.threads, args.seed,
                            args.timing_epochs)
        theirs = peers[name]["fit_s"] / peers[name]["epochs_trained"]
        mine = ours["fit_s"] / ours["epochs"]
        table[name] = {"recbole_s_per_epoch": theirs, "recstack_s_per_epoch": mine}
        print(f"| {name} | {theirs:.2f} | {mine:.2f} | {theirs / mine:.2f}x |", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"timing_epochs": args.timing_epochs, "threads": args.threads, "models": table},
                                       indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True,
                        help="folder holding <dataset>/<dataset>.{inter,user,item} (RecBole atomic files)")
    parser.add_argument("--dataset", default="ml-1m", choices=["ml-1m"])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=2020, help="recstack's model seed (RecBole's is 2020)")
    parser.add_argument("--peer-python", default=os.environ.get(PEER_VARIABLE),
                        help=f"a Python with recbole==1.2.1 installed (default: ${PEER_VARIABLE})")
    parser.add_argument("--peers-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "peers",
                        help="the folder holding run_recbole.py")
    parser.add_argument("--work", type=Path, default=Path("ctr_vs_recbole"))
    parser.add_argument("--reuse", action="store_true", help="reuse RecBole results already in --work")
    parser.add_argument("--own-fields", action="store_true",
                        help="a second recstack row per model with recstack's own ml-1m fields")
    parser.add_argument("--dropout-position", choices=["before_linear", "after_activation"], default="before_linear",
                        help="recstack's DNN dropout: before each linear layer as RecBole's MLPLayers (like for "
                             "like), or after each activation (recstack's default, the papers' code and FuxiCTR)")
    parser.add_argument("--timing-epochs", type=int, default=None,
                        help="speed only: both sides train exactly this many epochs (no early stopping) and the "
                             "script prints seconds per epoch; run it on a quiet machine")
    parser.add_argument("--out", type=Path, default=None, help="write every figure as JSON here")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print_machine(f"settings: {args.threads} torch thread(s) on both sides (RecBole under --peer-python, OMP_NUM_THREADS too)")
    if not args.peer_python or not Path(args.peer_python).is_file():
        parser.error(f"--peer-python / ${PEER_VARIABLE}: a Python with recbole==1.2.1 is needed (got {args.peer_python!r})")
    if not (args.peers_dir / "run_recbole.py").is_file():
        parser.error(f"--peers-dir: no run_recbole.py in {args.peers_dir}")
    atomic = args.data / args.dataset
    if not (atomic / f"{args.dataset}.inter").is_file():
        parser.error(f"--data: no {args.dataset}/{args.dataset}.inter under {args.data}")
    args.work.mkdir(parents=True, exist_ok=True)
    args.data, args.work = args.data.resolve(), args.work.resolve()

    peers = {}
    split_dir = args.work / "split"
    for name in args.models:
        print(f"RecBole {MODELS[name][0]} ...", flush=True)
        peers[name] = run_recbole(MODELS[name][0], args, split_dir, args.timing_epochs)
    counts = json.loads((split_dir / "counts.json").read_text())
    parts = {part: read_part(split_dir / f"{part}.tsv") for part in ("train", "valid", "test")}
    for part, pairs in parts.items():  # the files are what RecBole's run exported, and every run used one split
        if split_sha1(pairs) != counts[f"{part}_sha1"]:
            sys.exit(f"{split_dir / part}.tsv does not match its counts.json digest; re-run without --reuse")
        for name, peer in peers.items():
            if peer["protocol"] != "C" or peer["dataset"] != args.dataset or peer["export"][f"{part}_sha1"] != counts[f"{part}_sha1"]:
                sys.exit(f"RecBole {peer['model']}: protocol {peer['protocol']} on {peer['dataset']} with another {part} "
                         "split than the exported one; no ratio is printed between different protocols")
            if peer["time_capped"] or (args.timing_epochs is None and peer["epochs_trained"] == 300):
                sys.exit(f"RecBole {peer['model']} stopped on a cap, not on validation; both sides must stop alike")

    from recstack.data.ctr import FieldSpec, make_ctr_split
    from recstack.data.formats.atomic import load_atomic

    dataset = load_atomic(atomic, args.dataset)
    inter = dataset.interactions
    users, items = np.asarray(inter.users.ids, dtype=object), np.asarray(inter.items.ids, dtype=object)
    row_of = {(users[u], items[i]): r for r, (u, i) in enumerate(zip(np.asarray(inter.user), np.asarray(inter.item)))}
    rows = [np.fromiter((row_of[pair] for pair in parts[part]), np.int64, len(parts[part]))
            for part in ("train", "valid", "test")]
    field_sets = {"RecBole's fields": [FieldSpec("user_id"), FieldSpec("item_id"), FieldSpec("gender"),
                                       FieldSpec("genres")]}
    if args.own_fields:
        field_sets["recstack's fields"] = [
            FieldSpec("user_id"), FieldSpec("item_id"), FieldSpec("gender"), FieldSpec("age"), FieldSpec("occupation"),
            FieldSpec("year", kind="numeric", transform="bucketise", n_buckets=8), FieldSpec("genres", kind="multi", sep=" ")]
    splits = {label: make_ctr_split(dataset, specs, threshold=4, parts=rows) for label, specs in field_sets.items()}
    if args.timing_epochs is not None:
        timing(args, peers, splits["RecBole's fields"])
        return

    ours = {}
    for name in args.models:
        for label, split in splits.items():
            print(f"recstack {name} ({label}) ...", flush=True)
            ours[(name, label)] = fit_recstack(name, recstack_params(name, args.dropout_position), split, args.threads,
                                               args.seed)

    print(f"\nprotocol (both sides): RecBole 1.2.1 protocol C on {args.dataset}, its exported rows (train "
          f"{counts['train']:,} / valid {counts['valid']:,} / test {counts['test']:,}), label rating >= 4; Adam 1e-3, batch "
          f"2048, embedding 10, early stopping on valid AUC with patience 10 (cap 300 epochs), best epoch restored; "
          f"{args.threads} torch thread(s); recstack's DNN dropout {args.dropout_position}. Each library keeps its own "
          "initialisation.\n")
    print("| model | library (fields) | valid AUC | test AUC | test LogLoss | epochs (best) | s / epoch | test rows/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    table = {}
    for name in args.models:
        peer = peers[name]
        theirs = {"valid": {"AUC": peer["best_valid"]["auc"]}, "test": {"AUC": peer["test"]["auc"], "LogLoss": peer["test"]["logloss"]},
                  "epochs": peer["epochs_trained"], "best_epoch": peer["best_epoch"], "fit_s": peer["fit_s"],
                  "predict_rows_per_s": counts["test"] / peer["test_eval_s"]}
        table[name] = {"recbole": theirs, "recstack": {label: ours[(name, label)] for label in splits}}
        rows_out = [(f"RecBole {peer['model']} (user_id, item_id, gender, genre)", theirs)]
        rows_out += [(f"recstack {name} ({label})", ours[(name, label)]) for label in splits]
        for side, r in rows_out:
            print(f"| {name} | {side} | {r['valid']['AUC']:.4f} | {r['test']['AUC']:.4f} | {r['test']['LogLoss']:.4f} | "
                  f"{r['epochs']} ({r['best_epoch']}) | {r['fit_s'] / r['epochs']:.1f} | {r['predict_rows_per_s']:,.0f} |")
        same = ours[(name, "RecBole's fields")]
        print(f"| {name} | ratio recstack / RecBole, same fields | | {same['test']['AUC'] / theirs['test']['AUC']:.4f} | "
              f"{same['test']['LogLoss'] / theirs['test']['LogLoss']:.4f} | | "
              f"{(theirs['fit_s'] / theirs['epochs']) / (same['fit_s'] / same['epochs']):.2f}x faster | "
              f"{same['predict_rows_per_s'] / theirs['predict_rows_per_s']:.1f}x |")
    if args.out:
        args.out.write_text(json.dumps({"counts": counts, "threads": args.threads, "models": table}, indent=2))


if __name__ == "__main__":
    main()
