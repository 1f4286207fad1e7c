"""A tiny finished run for the serving tests: a MovieLens-1M-format folder (titles, years, genres) from
the clustered synthetic log, run in-process once per test session by `recstack run`'s own flow."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from unittest import mock

from recstack.experiment import parse_config, run_experiment
from recstack.testing import clustered_interactions

GENRES = ("Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi")
N_USERS, N_ITEMS = 80, 40
MODELS = [{"name": "pop"}, {"name": "itemknn"}, {"name": "ease", "params": {"reg": 50.0}},
          {"name": "bpr", "params": {"epochs": 2, "verbose": False, "embedding_size": 8}},
          {"name": "sasrec", "params": {"epochs": 1, "embedding_size": 8, "verbose": False}}]


def genres_of(item: int) -> str:
    """Item ids are 1..N_ITEMS; the genres and year follow from the id."""
    return f"{GENRES[(item - 1) % 6]}|{GENRES[item % 6]}"


def year_of(item: int) -> int:
    return 1980 + (item - 1) % 20


def write_movielens(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    log = clustered_interactions(n_users=N_USERS, n_items=N_ITEMS, per_user=12, seed=0)
    (folder / "ratings.dat").write_text("".join(
        f"{u + 1}::{i + 1}::{int(v)}::{t}\n"
        for u, i, v, t in zip(log.users.ids[log.user], log.items.ids[log.item], log.value, log.timestamp)))
    (folder / "movies.dat").write_text("".join(
        f"{i}::Movie {i} ({year_of(i)})::{genres_of(i)}\n" for i in range(1, N_ITEMS + 1)))
    (folder / "users.dat").write_text("".join(f"{u}::M::25::1::12345\n" for u in range(1, N_USERS + 1)))
    return folder


def run_dir_for(root: Path, models: list[dict] = MODELS) -> Path:
    data = write_movielens(root / "data")
    config = parse_config({"data": {"path": str(data), "format": "movielens"}, "models": models, "ks": [5, 10],
                           "output_dir": str(root / "runs")})
    with no_charts():
        return run_experiment(config, progress=False).run_dir


def no_charts():
    """The report's charts take most of a tiny run's time, and serving never reads them."""
    return mock.patch("recstack.experiment.charts.plotting_backends", lambda: {"plotly": False, "matplotlib": False})


@functools.cache
def tiny_run() -> Path:
    """The session's run directory (built on first use; every test module shares it)."""
    root = Path(tempfile.mkdtemp(prefix="recstack-serve-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return run_dir_for(root)


@functools.cache
def light_run() -> Path:
    """A run of models without torch (pop, ease): the subprocess tests start a server in seconds."""
    root = Path(tempfile.mkdtemp(prefix="recstack-serve-light-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return run_dir_for(root, [{"name": "pop"}, {"name": "ease", "params": {"reg": 50.0}}])
