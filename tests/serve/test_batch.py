"""`recstack recommend RUN_DIR --all-users --out recs.parquet`: every user's top-k in blocks, the same
lists the server gives one user at a time, cold users flagged."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from recstack.cli import app
from recstack.experiment.rundir import read_history
from recstack.serve.app import create_app
from serve_run import N_USERS, tiny_run


def test_all_users_matches_the_server_and_masks_history(tmp_path):
    run_dir = tiny_run()
    out = tmp_path / "recs.parquet"
    result = CliRunner().invoke(app, ["recommend", str(run_dir), "--all-users", "--out", str(out), "-k", "5"])
    assert result.exit_code == 0, result.output
    table = pq.read_table(out).to_pandas()
    assert set(table.columns) == {"model", "user_id", "rank", "item_id", "score", "fallback"}
    assert set(table["model"]) == {"pop", "itemknn", "ease", "bpr", "sasrec"}
    per_model = table.groupby("model").size()
    assert (per_model == N_USERS * 5).all()
    history, _ = read_history(run_dir / "history.npz")
    pairs = set(zip(history.users.ids[history.user].tolist(), history.items.ids[history.item].tolist()))
    assert not pairs & set(zip(table["user_id"].tolist(), table["item_id"].tolist()))
    with TestClient(create_app(run_dir, events=tmp_path / "events.sqlite")) as client:
        for user in (1, 17, 80):
            served = client.post("/v1/recommend", json={"user_id": user, "k": 5, "model": "ease"}).json()
            rows = table[(table["model"] == "ease") & (table["user_id"] == user)].sort_values("rank")
            assert rows["item_id"].tolist() == [i["item_id"] for i in served["items"]]
            assert np.allclose(rows["score"], [i["score"] for i in served["items"]], rtol=1e-5)


def test_all_users_needs_a_parquet_out(tmp_path):
    run_dir = tiny_run()
    missing = CliRunner().invoke(app, ["recommend", str(run_dir), "--all-users"])
    assert missing.exit_code == 2 and "--out" in missing.output
    wrong = CliRunner().invoke(app, ["recommend", str(run_dir), "--all-users", "--out", str(tmp_path / "r.csv")])
    assert wrong.exit_code == 2 and ".parquet" in wrong.output
    neither = CliRunner().invoke(app, ["recommend", str(run_dir)])
    assert neither.exit_code == 2 and "--all-users" in neither.output
