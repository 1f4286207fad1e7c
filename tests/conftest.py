"""Shared fixtures: a small clustered implicit-feedback log that models can actually learn."""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from recstack.data import Interactions
from recstack.split import Split
from recstack.testing import clustered_interactions, shuffled_split


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


# the contract's synthetic data, shipped in `recstack.testing` so a user's own tests use it too
make_clustered = clustered_interactions
simple_split = shuffled_split


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
