#!/usr/bin/env python3
"""Set up recstack in ./.venv (idempotent) and run the default benchmark or the test suite.

    python3 dev.py benchmark   # set up, then `recstack run` (ml-100k default benchmark)
    python3 dev.py test        # set up, then the whole test suite

Needs nothing but Python >= 3.11. The environment is rebuilt only when pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".recstack-setup-stamp"
# torch is pinned: an unpinned torch pulls several GB of CUDA packages
TORCH = "torch==2.13.0"


def sh(*args: str | Path) -> None:
    print("+", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], check=True, cwd=ROOT)


def setup() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"recstack needs Python >= 3.11 (this is {sys.version.split()[0]})")
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + TORCH.encode()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted and PYTHON.exists():
        return
    if not PYTHON.exists():
        print(f"creating virtual environment in {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    pip = (PYTHON, "-m", "pip", "install", "--disable-pip-version-check", "-q")
    sh(*pip, TORCH)
    sh(*pip, "-e", ".[all,test]")
    STAMP.write_text(wanted)


def ensure_chromium() -> None:
    """The report's browser test drives Debian's chromium (never a browser downloaded from a CDN):
    install it with apt when it is missing and apt is there; otherwise say how."""
    if Path("/usr/bin/chromium").exists():
        return
    apt = shutil.which("apt-get") if os.name == "posix" else None
    if apt is not None and os.geteuid() == 0:
        sudo = []
    else:
        sudo = [shutil.which("sudo")] if shutil.which("sudo") else None
    if apt is None or sudo is None:
        print("note: /usr/bin/chromium is missing, so the report's browser test will fail; install Debian's "
              "chromium package (apt-get install chromium) or deselect it with -m 'not browser'", flush=True)
        return
    sh(*sudo, apt, "update", "-q")
    sh(*sudo, apt, "install", "-y", "-q", "--no-install-recommends", "chromium")


def main(argv: list[str]) -> int:
    if len(argv) < 1 or argv[0] not in {"benchmark", "test", "setup"}:
        print(__doc__)
        return 2
    setup()
    command, rest = argv[0], argv[1:]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if command == "benchmark":
        return subprocess.call([str(BIN / "recstack"), "run", *rest], cwd=ROOT, env=env)
    if command == "test":
        ensure_chromium()
        return subprocess.call([str(PYTHON), "-m", "pytest", "-q", *rest], cwd=ROOT, env=env)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
