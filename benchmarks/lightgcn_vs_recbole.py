"""LightGCN training-epoch time: recstack vs RecBole 1.2.1, on the same data, settings and threads.

Both train LightGCN with 64-dim embeddings, 3 layers, batch 2048, one uniform negative per
positive, Adam, on the training part (80%) of a per-user random 8:1:1 split of the same
interactions (ml-100k, and power-law synthetic sets of a given size). Each library splits with
its own code, so the training sets hold the same number of pairs but not the same pairs; epoch
time depends on the count, not on which pairs. Only training epochs are timed (no validation);
the figure is the median over `--epochs` epochs after one warm-up epoch.

RecBole runs in its own virtual environment (numpy<2; see the peers README beside the shared peer
driver), driven by this same file with `--as-recbole` under that environment's Python: it imports
the peer driver `run_recbole.py` for its runtime fixes, reads the interactions as a RecBole atomic
`.inter` file and times `trainer._train_epoch`. The peer Python and the driver's folder come from
`--peer-python` / `--peers-dir` or the variables RECSTACK_PEER_PYTHON / RECSTACK_PEERS_DIR
(`peer_env.py`). The machine (CPU, BLAS, threads) is printed first, and the RecBole side's torch
build and threads with each row.

    export RECSTACK_PEER_PYTHON=/path/to/.peer-venv/bin/python RECSTACK_PEERS_DIR=/path/to/peers
    .venv/bin/python benchmarks/lightgcn_vs_recbole.py [--datasets ml-100k synthetic-1000000] [--threads 2] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import print_machine, torch_blas
from peer_env import add_peer_options, resolve_peer

SETTINGS = {"embedding_size": 64, "n_layers": 3, "batch_size": 2048}


def write_atomic(path: Path, users, items) -> None:
    """user/item ids as a RecBole atomic interaction file (every row a positive, no timestamps)."""
    with open(path, "w") as out:
        out.write("user_id:token\titem_id:token\n")
        for u, i in zip(users, items):
            out.write(f"{u}\t{i}\n")


def recbole_epochs(inter_dir: Path, name: str, epochs: int, threads: int, peers_dir: Path) -> dict:
    """Runs inside the peer environment: RecBole's LightGCN on `inter_dir/name/name.inter`."""
    import torch

    sys.path.insert(0, str(peers_dir))
    import run_recbole  # noqa: F401  (applies the peer driver's runtime fixes on import)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    torch.set_num_threads(threads)
    config = Config(model="LightGCN", dataset=name, config_dict={
        **run_recbole.COMMON, **run_recbole.PROTOCOLS["A"], "data_path": str(inter_dir),
        "load_col": {"inter": ["user_id", "item_id"]}, "epochs": epochs + 1,
        "embedding_size": SETTINGS["embedding_size"], "n_layers": SETTINGS["n_layers"],
        "train_batch_size": SETTINGS["batch_size"],
    })
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)
    model = get_model("LightGCN")(config, train_data._dataset).to("cpu")
    trainer = get_trainer(config["MODEL_TYPE"], "LightGCN")(config, model)
    seconds = []
    for epoch in range(epochs + 1):
        start = time.perf_counter()
        trainer._train_epoch(train_data, epoch, show_progress=False)
        seconds.append(time.perf_counter() - start)
    return {"train_pairs": len(train_data._dataset), "epoch_s": seconds[1:], "threads": torch.get_num_threads(),
            "torch": torch_blas()}


def recstack_epochs(data, epochs: int, threads: int, seed: int = 2020) -> dict:
    import torch

    from recstack.models import build
    from recstack.split import make_split

    torch.set_num_threads(threads)
    split = make_split(data, method="random", ratios=(0.8, 0.1, 0.1), seed=seed)
    model = build("lightgcn", {**SETTINGS, "epochs": epochs + 1, "early_stopping_patience": None,
                               "verbose": False, "device": "cpu"})
    model.fit(split.train)  # no validation: the history times training alone
    return {"train_pairs": len(split.train), "epoch_s": [h["seconds"] for h in model.history_][1:],
            "threads": torch.get_num_threads()}


def load(name: str):
    from recstack.data.datasets import load_dataset
    from recstack.data.synthetic import power_law_interactions

    if name.startswith("synthetic-"):
        return power_law_interactions(int(name.split("-", 1)[1]), seed=0)
    return load_dataset(name).interactions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_peer_options(parser)
    parser.add_argument("--datasets", nargs="+", default=["ml-100k", "synthetic-1000000"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--as-recbole", nargs=2, metavar=("INTER_DIR", "NAME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    resolve_peer(parser, args, python=not args.as_recbole)
    if args.as_recbole:
        print(json.dumps(recbole_epochs(Path(args.as_recbole[0]), args.as_recbole[1], args.epochs, args.threads,
                                        args.peers_dir)))
        return

    import torch

    torch.set_num_threads(args.threads)
    print_machine(f"settings: {args.threads} torch threads on each side (torch.set_num_threads); RecBole runs under "
                  f"{args.peer_python}, driver {args.peers_dir / 'run_recbole.py'}")
    print("compared: training-epoch seconds only, no accuracy figure of either side. Both sides: LightGCN, "
          f"{SETTINGS['embedding_size']} dims, {SETTINGS['n_layers']} layers, batch {SETTINGS['batch_size']}, one "
          "uniform negative, Adam, on the train part (80%) of each library's own per-user random 8:1:1 split",
          flush=True)
    rows = []
    for name in args.datasets:
        data = load(name)
        ours = recstack_epochs(data, args.epochs, args.threads)
        with tempfile.TemporaryDirectory() as tmp:
            atomic_name = name.replace("-", "_")
            (Path(tmp) / atomic_name).mkdir()
            write_atomic(Path(tmp) / atomic_name / f"{atomic_name}.inter", data.user, data.item)
            done = subprocess.run([args.peer_python, __file__, "--as-recbole", tmp, atomic_name,
                                   "--epochs", str(args.epochs), "--threads", str(args.threads),
                                   "--peers-dir", str(args.peers_dir)],
                                  capture_output=True, text=True, cwd=tmp)
            if done.returncode != 0:
                sys.exit(f"the RecBole side failed under {args.peer_python} (exit {done.returncode}):\n"
                         + done.stderr[-3000:])
            theirs = json.loads(done.stdout.strip().splitlines()[-1])
        ours_s, theirs_s = statistics.median(ours["epoch_s"]), statistics.median(theirs["epoch_s"])
        row = {"dataset": name, "interactions": len(data), "recstack_train_pairs": ours["train_pairs"],
               "recbole_train_pairs": theirs["train_pairs"], "recstack_epoch_s": ours_s,
               "recbole_epoch_s": theirs_s, "speedup": theirs_s / ours_s, "threads": args.threads,
               "recbole_threads": theirs["threads"], "recbole_torch": theirs.get("torch")}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| data | train pairs (recstack / RecBole) | recstack s/epoch | RecBole s/epoch | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['dataset']} | {r['recstack_train_pairs']:,} / {r['recbole_train_pairs']:,} "
              f"| {r['recstack_epoch_s']:.2f} | {r['recbole_epoch_s']:.2f} | {r['speedup']:.1f}x |")


if __name__ == "__main__":
    main()
