"""Shared fixtures: a small clustered implicit-feedback log that models can actually learn."""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest

from recstack.data import Interactions
from recstack.split import Split


# torch.compile's kernel cache is not keyed by the forced kernel level: a kernel compiled under
# ATEN_CPU_CAPABILITY=avx2 aborts the process when a native run loads it, and the other way round.
# One cache per level, so `dev.py test --cpu ...` and a plain run never share compiled kernels.
_KERNEL_LEVEL = "-".join(os.environ.get(v, "native") for v in ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS"))
_OWNER = os.getuid() if hasattr(os, "getuid") else "user"  # getpass.getuser() fails for a uid without a name
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"torchinductor_{_OWNER}_{_KERNEL_LEVEL}"))


def pytest_terminal_summary(terminalreporter) -> None:
    """Which kernels this run used, so a log shows the CPU kind it tested (see dev.py --cpu); a
    summary line, unlike the header, is printed under -q too."""
    terminalreporter.write_line("kernels: " + "; ".join(_kernel_lines()))


def _kernel_lines() -> list[str]:
    lines = []
    try:
        import torch

        lines.append(f"torch CPU capability: {torch.backends.cpu.get_cpu_capability()}")
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_info

        blas = [f"{i['internal_api']} {i.get('architecture', '?')}" for i in threadpool_info() if i["user_api"] == "blas"]
        lines.append(f"numpy BLAS: {', '.join(blas) or 'none loaded'}")
    except ImportError:
        pass
    return lines


def make_clustered(n_users: int = 300, n_items: int = 120, n_clusters: int = 6, per_user: int = 25,
                   in_cluster: float = 0.85, seed: int = 0) -> Interactions:
    """Users of cluster c mostly consume items of cluster c; popularity skews within clusters."""
    rng = np.random.default_rng(seed)
    user_cluster = rng.integers(0, n_clusters, n_users)
    item_cluster = np.arange(n_items) % n_clusters
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.5
    users, items, times = [], [], []
    for u in range(n_users):
        own = item_cluster == user_cluster[u]
        p = np.where(own, in_cluster / own.sum(), (1 - in_cluster) / (~own).sum()) * popularity
        chosen = rng.choice(n_items, size=per_user, replace=False, p=p / p.sum())
        users.append(np.full(per_user, u))
        items.append(chosen)
        times.append(rng.permutation(per_user) + 1000 * u)
    return Interactions.from_ids(
        np.concatenate(users), np.concatenate(items),
        value=rng.integers(1, 6, n_users * per_user).astype(np.float32),
        timestamp=np.concatenate(times),
    )


def simple_split(data: Interactions, seed: int = 0) -> Split:
    """Per-user 8:1:1 by a seeded shuffle (independent of recstack.split, for model tests)."""
    rng = np.random.default_rng(seed)
    position = np.empty(len(data), dtype=np.float64)
    for u in range(data.n_users):
        lo, hi = data.indptr[u], data.indptr[u + 1]
        position[lo:hi] = rng.permutation(hi - lo) / max(hi - lo, 1)
    return Split(data.take(position < 0.8), data.take((position >= 0.8) & (position < 0.9)),
                 data.take(position >= 0.9), method="fixture")


@pytest.fixture(scope="session")
def clustered() -> Interactions:
    return make_clustered()


@pytest.fixture(scope="session")
def clustered_split(clustered) -> Split:
    return simple_split(clustered)


def user_module(folder: Path, monkeypatch, body: str = "") -> tuple[str, Path]:
    """A module on sys.path whose import writes a flag file: the proof that its code ran."""
    name = f"recstack_user_code_{uuid.uuid4().hex[:8]}"
    flag = folder / f"{name}.imported"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(f"from pathlib import Path\nPath({str(flag)!r}).write_text('ran')\n{body}")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name, flag
