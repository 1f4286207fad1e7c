"""recstack's DeepFM and AutoInt+ against FuxiCTR's on the identical processed split (issue 16).

One script, one machine, one run: recstack builds the CTR split of an experiment config (labels,
random 8:1:1 rows, train-only vocabularies) and trains each named entry; the same rows, with every
field's *encoded* ids written out as tokens (a multi-valued field as "|"-joined ids), go to
FuxiCTR's own pipeline (its FeatureProcessor, parquet loader and model zoo), which trains the same
architecture with the same settings under the peer Python (`fuxictr_driver.py`). Both sides: the
same rows and fields, embedding size, batch size, learning rate and Adam, the same epoch cap, early
stopping on validation AUC with the same patience and the best epoch restored, no learning-rate
decay (FuxiCTR's `reduce_lr_on_plateau` off), the same torch thread count. What stays each library's
own is printed with the table: initialisation, FuxiCTR's gradient clipping at norm 10, and its
AutoInt's dropout also on the attention weights.

    # once: a Python with fuxictr (pip) and FuxiCTR's model zoo (a checkout of reczoo/FuxiCTR)
    .venv/bin/python benchmarks/ctr_vs_fuxictr.py --config examples/ctr_ml1m.yaml \\
        --models deepfm autoint_plus --threads 1 --peer-python /path/to/fuxictr-venv/bin/python \\
        --model-zoo /path/to/FuxiCTR/model_zoo --work /tmp/ctr_vs_fuxictr

Epoch time is the fit's seconds over its epochs, each epoch one training pass plus the validation
pass that ends it (both libraries validate once per epoch); process CPU seconds are printed beside
wall seconds because they do not move with other load on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from machine import print_machine

PEER_VARIABLE = "RECSTACK_FUXICTR_PYTHON"
ZOO_VARIABLE = "RECSTACK_FUXICTR_ZOO"
ZOO_MODELS = {"deepfm": ("DeepFM", "DeepFM/DeepFM_torch/src"), "autoint": ("AutoInt", "AutoInt/src"),
              "autoint+": ("AutoInt", "AutoInt/src")}


def fuxictr_params(name: str, config) -> dict:
    """FuxiCTR's settings for recstack model `name` with validated config `config` (same architecture)."""
    shared = {"embedding_dim": config.embedding_size, "batch_size": config.batch_size,
              "learning_rate": config.learning_rate, "epochs": config.epochs,
              "early_stop_patience": config.early_stopping_patience, "reduce_lr_on_plateau": False,
              "embedding_regularizer": config.reg or None, "net_regularizer": None, "batch_norm": False}
    if name == "deepfm":
        return {**shared, "hidden_units": list(config.hidden_units), "hidden_activations": "relu",
                "net_dropout": config.dropout}
    if name in ("autoint", "autoint+"):
        return {**shared, "dnn_hidden_units": list(config.hidden_units), "dnn_activations": "relu",
                "attention_layers": config.n_layers, "num_heads": config.n_heads,
                "attention_dim": config.n_heads * config.attention_size, "net_dropout": config.dropout,
                "use_residual": config.residual, "use_scale": False, "use_wide": False, "layer_norm": False}
    raise SystemExit(f"--models: no FuxiCTR counterpart is wired for {name!r}; choose deepfm, autoint or autoint+")


def export_split(split, kinds: dict[str, str], folder: Path) -> list[dict]:
    """Write train/valid/test CSVs of the encoded ids per field; return the fields for the driver."""
    import polars as pl

    folder.mkdir(parents=True, exist_ok=True)
    fields = split.features.fields
    widths = {}
    for part in ("train", "valid", "test"):
        data = getattr(split, part)
        index, weight = data.encode(None)
        columns = {}
        for j, name in enumerate(fields):
            ids = np.where(weight[:, j, :] > 0, index[:, j, :], 0)
            if kinds[name] == "multi":
                widths[name] = max(widths.get(name, 1), int((ids > 0).sum(1).max()))
                columns[name] = ["|".join(str(v) for v in row[row > 0]) for row in ids]
            else:  # one id per row: categorical, bucketised numeric
                columns[name] = ids[:, 0].astype(str)
        columns["label"] = data.label.astype(np.float32)
        pl.DataFrame(columns).write_csv(folder / f"{part}.csv")
    return [{"name": name, "type": "sequence" if kinds[name] == "multi" else "categorical",
             "max_len": widths.get(name, 1)} for name in fields]


def fit_recstack(model, split, threads: int) -> dict:
    from recstack.evaluate.ctr import auc, log_loss

    import torch

    torch.set_num_threads(threads)
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(split.train, split.valid)
    fit_wall, fit_cpu = time.perf_counter() - wall, time.process_time() - cpu
    out = {"epochs": len(model.history_), "best_epoch": int(model.best_epoch_), "fit_seconds": fit_wall,
           "fit_cpu_seconds": fit_cpu}
    for part in ("valid", "test"):
        data = getattr(split, part)
        started = time.perf_counter()
        p = model.predict(data).astype(np.float64)
        seconds = time.perf_counter() - started
        out[part] = {"AUC": auc(data.label, p), "LogLoss": log_loss(data.label, p), "rows": len(data)}
        if part == "test":
            out["predict_rows_per_second"] = len(data) / seconds
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("examples/ctr_ml1m.yaml"))
    parser.add_argument("--models", nargs="+", default=["deepfm", "autoint_plus"],
                        help="labels of the config's model entries (deepfm, autoint, autoint+ models)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=None, help="model seed (default: the config's)")
    parser.add_argument("--peer-python", default=os.environ.get(PEER_VARIABLE),
                        help=f"a Python with fuxictr installed (default: ${PEER_VARIABLE})")
    parser.add_argument("--model-zoo", type=Path, default=os.environ.get(ZOO_VARIABLE),
                        help=f"FuxiCTR's model_zoo folder from its repository (default: ${ZOO_VARIABLE})")
    parser.add_argument("--work", type=Path, default=Path("ctr_vs_fuxictr"))
    parser.add_argument("--out", type=Path, default=None, help="write both sides' figures as JSON here")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print_machine(f"settings: {args.threads} torch thread(s) on both sides (FuxiCTR under --peer-python, OMP_NUM_THREADS too)")
    if not args.peer_python or not Path(args.peer_python).is_file():
        parser.error(f"--peer-python / ${PEER_VARIABLE}: a Python with fuxictr installed is needed "
                     f"(got {args.peer_python!r})")
    if not args.model_zoo or not (Path(args.model_zoo) / "DeepFM").is_dir():
        parser.error(f"--model-zoo / ${ZOO_VARIABLE}: FuxiCTR's model_zoo folder (holding DeepFM/, AutoInt/) is "
                     f"needed (got {args.model_zoo!r})")

    from recstack.data.ctr import make_ctr_split
    from recstack.experiment.config import load_config
    from recstack.experiment.run import load_data
    from recstack.models.ctr import CTR_MODELS

    config = load_config(args.config)
    entries = {entry.display: entry for entry in config.models}
    missing = [m for m in args.models if m not in entries]
    if missing:
        parser.error(f"--models: {', '.join(missing)} not among the config's entries ({', '.join(entries)})")
    for entry in config.ctr.features:
        if entry.kind not in ("categorical", "multi") and not (entry.kind == "numeric" and entry.transform == "bucketise"):
            parser.error(f"feature {entry.name!r} ({entry.kind}) has no FuxiCTR export here: categorical, multi and "
                         "bucketised numeric fields only")
    seed = config.seed if args.seed is None else args.seed
    dataset = load_data(config)
    split = make_ctr_split(dataset, [f.spec() for f in config.ctr.features], threshold=config.ctr.threshold,
                           ratios=config.ctr.ratios, seed=config.split_seed(seed))
    kinds = {f.name: f.kind for f in config.ctr.features}
    data_dir = args.work / "data"
    fields = export_split(split, kinds, data_dir)
    print(f"split {split.fingerprint()}: train {len(split.train):,} / valid {len(split.valid):,} / test "
          f"{len(split.test):,} rows, {len(fields)} fields; exported to {data_dir}", flush=True)

    results = {}
    for label in args.models:
        entry = entries[label]
        name = entry.name
        model_config = config.model_config_for(entry, seed)
        print(f"{label}: recstack ...", flush=True)
        ours = fit_recstack(CTR_MODELS.resolve(name)(model_config), split, args.threads)
        zoo_class, zoo_src = ZOO_MODELS[name]
        spec = {"data_dir": str(data_dir.resolve()), "dataset_id": f"recstack_{label}", "fields": fields,
                "model": zoo_class, "model_src": str((Path(args.model_zoo) / zoo_src).resolve()),
                "params": fuxictr_params(name, model_config), "threads": args.threads, "seed": seed}
        spec_path, result_path = args.work / f"{label}.spec.json", args.work / f"{label}.fuxictr.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        print(f"{label}: FuxiCTR ...", flush=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": ""}
        done = subprocess.run([args.peer_python, str(Path(__file__).with_name("fuxictr_driver.py")), str(spec_path),
                               str(result_path)], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{label}: the FuxiCTR driver failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        theirs = json.loads(result_path.read_text())
        results[label] = {"recstack": ours, "fuxictr": theirs}

    print("\nprotocol (both sides): the rows of " + str(args.config) + f" (seed {seed}), label rating >= "
          f"{config.ctr.threshold:g}, random {config.ctr.ratios} rows, recstack's train-only encoded ids as every "
          "field's tokens; early stopping on valid AUC, best epoch restored; Adam; "
          f"{args.threads} torch thread(s); no LR decay.")
    print("each library's own: initialisation (recstack N(0, 0.01), FuxiCTR N(0, 1e-4)); FuxiCTR clips gradients at "
          "norm 10; FuxiCTR's AutoInt applies net_dropout to the attention weights too.\n")
    print("| model | library | valid AUC | test AUC | test LogLoss | epochs (best) | s / epoch | CPU s / epoch "
          "| predict rows/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, both in results.items():
        for side, r in (("recstack", both["recstack"]), (both["fuxictr"]["library"], both["fuxictr"])):
            print(f"| {label} | {side} | {r['valid']['AUC']:.4f} | {r['test']['AUC']:.4f} | {r['test']['LogLoss']:.4f} "
                  f"| {r['epochs']} ({r['best_epoch']}) | {r['fit_seconds'] / r['epochs']:.1f} | "
                  f"{r['fit_cpu_seconds'] / r['epochs']:.1f} | {r['predict_rows_per_second']:,.0f} |")
        ours, theirs = both["recstack"], both["fuxictr"]
        print(f"| {label} | ratio recstack / FuxiCTR | | {ours['test']['AUC'] / theirs['test']['AUC']:.4f} | | | "
              f"{(theirs['fit_seconds'] / theirs['epochs']) / (ours['fit_seconds'] / ours['epochs']):.2f}x faster | "
              f"{(theirs['fit_cpu_seconds'] / theirs['epochs']) / (ours['fit_cpu_seconds'] / ours['epochs']):.2f}x | "
              f"{ours['predict_rows_per_second'] / theirs['predict_rows_per_second']:.2f}x |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
