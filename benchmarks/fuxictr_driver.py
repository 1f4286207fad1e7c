"""Train one FuxiCTR model on a split exported by `ctr_vs_fuxictr.py` and write its figures as JSON.

Runs under the peer Python (FuxiCTR 2.3.x and its model zoo), never under recstack's: it imports
nothing from recstack. The spec file (JSON) names the exported CSVs, the fields, the model class and
its settings; the result file gets validation and test AUC/LogLoss, the epochs run, the best epoch,
the fit's wall and process-CPU seconds, and test prediction rows per second.

    python fuxictr_driver.py SPEC.json RESULT.json
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path


def _iterators(loaded):
    """FuxiCTR 2.3.10 (pip) returns the generators; its repository's newer loader wraps them."""
    return loaded.make_iterator() if hasattr(loaded, "make_iterator") else loaded


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    out_path = Path(sys.argv[2])
    threads = int(spec["threads"])
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(Path(spec["model_src"]).parent))  # <zoo>/<Model>/ holds the model's `src` package
    import src as zoo  # the model zoo's package for this model
    from fuxictr.features import FeatureMap
    from fuxictr.metrics import evaluate_metrics
    from fuxictr.preprocess import FeatureProcessor, build_dataset
    from fuxictr.pytorch.dataloaders import RankDataLoader
    from fuxictr.pytorch.torch_utils import seed_everything

    logging.basicConfig(level=logging.WARNING)
    data_dir = Path(spec["data_dir"])
    dataset_id = spec["dataset_id"]
    feature_cols = []
    for field in spec["fields"]:
        if field["type"] == "categorical":
            feature_cols.append({"name": field["name"], "active": True, "dtype": "str", "type": "categorical"})
        else:  # a multi-valued field: "|"-separated ids, mean-pooled as recstack's `multi` kind is
            feature_cols.append({"name": field["name"], "active": True, "dtype": "str", "type": "sequence",
                                 "splitter": "|", "max_len": int(field["max_len"]), "padding": "post",
                                 "encoder": "MaskedAveragePooling"})
    label_col = {"name": "label", "dtype": "float"}
    params = {
        "dataset_id": dataset_id, "data_root": str(data_dir), "data_format": "csv",
        "train_data": str(data_dir / "train.csv"), "valid_data": str(data_dir / "valid.csv"),
        "test_data": str(data_dir / "test.csv"), "min_categr_count": 1, "feature_cols": feature_cols,
        "label_col": label_col, "model_root": str(data_dir / "checkpoints"), "verbose": 0,
        "num_workers": 1, "gpu": -1, "seed": int(spec["seed"]), "task": "binary_classification",
        "loss": "binary_crossentropy", "metrics": ["logloss", "AUC"], "monitor": "AUC", "monitor_mode": "max",
        "optimizer": "adam", "shuffle": True, "save_best_only": True, "eval_steps": None, "debug_mode": False,
        "group_id": None, "model_id": spec["model"], **spec["params"],
    }
    seed_everything(seed=params["seed"])
    clock = time.perf_counter()
    encoder = FeatureProcessor(**params)
    params["train_data"], params["valid_data"], params["test_data"] = build_dataset(encoder, **params)
    data_seconds = time.perf_counter() - clock
    feature_map = FeatureMap(dataset_id, str(data_dir / dataset_id))
    feature_map.load(str(data_dir / dataset_id / "feature_map.json"), params)

    model = getattr(zoo, spec["model"])(feature_map, **params)
    os.makedirs(model.model_dir, exist_ok=True)  # FuxiCTR's run_expid.py makes it through its logger set-up
    train_gen, valid_gen = _iterators(RankDataLoader(feature_map, stage="train", **params))
    epochs = []
    run_epoch = model.train_epoch

    def timed_epoch(generator):  # one training pass plus the validation that ends it, as recstack's epoch
        wall, cpu = time.perf_counter(), time.process_time()
        run_epoch(generator)
        epochs.append({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
                       "best_auc": float(model._best_metric)})

    model.train_epoch = timed_epoch
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(train_gen, validation_data=valid_gen, **params)
    fit_wall, fit_cpu = time.perf_counter() - wall, time.process_time() - cpu

    def figures(generator) -> tuple[dict, float]:
        model.eval()
        started = time.perf_counter()
        y_pred, y_true = [], []
        with torch.no_grad():
            for batch in generator:
                y_pred.append(model.forward(batch)["y_pred"].reshape(-1).cpu().numpy())
                y_true.append(model.get_labels(batch).reshape(-1).cpu().numpy())
        seconds = time.perf_counter() - started
        y_pred, y_true = np.concatenate(y_pred).astype(np.float64), np.concatenate(y_true).astype(np.float64)
        values = evaluate_metrics(y_true, y_pred, ["AUC", "logloss"])
        return {"AUC": float(values["AUC"]), "LogLoss": float(values["logloss"]), "rows": int(len(y_true))}, seconds

    valid, _ = figures(valid_gen)
    test_gen = _iterators(RankDataLoader(feature_map, stage="test", **params))
    test, test_seconds = figures(test_gen)
    best = max(range(len(epochs)), key=lambda i: epochs[i]["best_auc"]) + 1 if epochs else 0
    import fuxictr

    result = {
        "library": f"FuxiCTR {fuxictr.__version__}", "model": spec["model"], "params": spec["params"],
        "valid": valid, "test": test, "epochs": len(epochs), "best_epoch": best,
        "fit_seconds": fit_wall, "fit_cpu_seconds": fit_cpu, "epoch_seconds": [e["wall"] for e in epochs],
        "epoch_cpu_seconds": [e["cpu"] for e in epochs], "data_seconds": data_seconds,
        "predict_rows_per_second": test["rows"] / test_seconds, "threads": threads,
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
    }
    out_path.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
