"""Where the peer libraries' environment is: the Python of the RecBole virtual environment and the
folder holding the shared peer driver `run_recbole.py` (see the peers README beside it).

Nothing here assumes where the checkout sits: both come from an option or, when the option is not
given, from an environment variable; a missing one stops the script with one line naming both.
This file imports nothing from recstack: the peer benchmarks re-run themselves under the peer
Python, which has RecBole but not recstack.

    export RECSTACK_PEER_PYTHON=/path/to/.peer-venv/bin/python
    export RECSTACK_PEERS_DIR=/path/to/peers        # holds run_recbole.py
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

PEER_PYTHON_VARIABLE = "RECSTACK_PEER_PYTHON"
PEERS_DIR_VARIABLE = "RECSTACK_PEERS_DIR"
DRIVER = "run_recbole.py"


def add_peer_options(parser: argparse.ArgumentParser, python: bool = True) -> None:
    """`--peer-python` (when the script starts the peer itself) and `--peers-dir`, defaulting to the variables."""
    if python:
        parser.add_argument("--peer-python", default=os.environ.get(PEER_PYTHON_VARIABLE),
                            help=f"the Python of the RecBole virtual environment (default: ${PEER_PYTHON_VARIABLE})")
    parser.add_argument("--peers-dir", type=Path, default=os.environ.get(PEERS_DIR_VARIABLE),
                        help=f"the folder holding the peer driver {DRIVER} (default: ${PEERS_DIR_VARIABLE})")


def missing_peer_python(value: str | None) -> str | None:
    """None when `value` names an existing file, else the one-line error naming the option and the variable."""
    if not value:
        return (f"the Python of the RecBole environment is not set: pass --peer-python PATH or set "
                f"{PEER_PYTHON_VARIABLE} (see the peers README for the set-up)")
    if not Path(value).is_file():
        return f"--peer-python / {PEER_PYTHON_VARIABLE}: {value} is not a file (the Python of the RecBole environment)"
    return None


def missing_peers_dir(value: str | Path | None) -> str | None:
    """None when `value` is a folder holding the peer driver, else the one-line error naming the option and
    the variable."""
    if not value:
        return (f"the peer driver's folder is not set: pass --peers-dir DIR or set {PEERS_DIR_VARIABLE} "
                f"(the folder that holds {DRIVER})")
    if not (Path(value) / DRIVER).is_file():
        return f"--peers-dir / {PEERS_DIR_VARIABLE}: {value} does not hold {DRIVER}"
    return None


def resolve_peer(parser: argparse.ArgumentParser, args: argparse.Namespace, python: bool = True) -> None:
    """Check the peer options once parsed; on missing or wrong ones, `parser.error` with their lines (exit 2)."""
    problems = [problem for problem in (missing_peer_python(args.peer_python) if python else None,
                                        missing_peers_dir(args.peers_dir)) if problem]
    if problems:
        parser.error("; ".join(problems))
    args.peers_dir = Path(args.peers_dir).resolve()
