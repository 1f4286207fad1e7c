"""Scale-out on Ray (issue 18): the same experiment, its evaluation, tuning and batch scoring on a
local Ray instance or a cluster.

recstack does not run its own process pool: Ray schedules the work, keeps the fitted model and
the interaction log in its object store (shared, zero-copy for the numpy arrays, by every task on
a node) and retries a task whose worker died. What runs in a task is the single-process code
itself (`evaluate.rank`, `steps.fit_entry`), so a distributed result is the local one:
the tests assert it user by user.

- `connect`: a local instance (default) or a cluster address, checked first so that an address
  that cannot be reached is one line, not a minute of retries.
- `RayRanker`: `evaluate(..., ranker=)` with user blocks ranked as Ray tasks.
- `recstack.cluster.batch`: every user's top-k written as partitioned Parquet by the tasks.
- `recstack.cluster.tune`: `recstack tune --backend ray`, Ray Tune trials with Optuna searching.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import numpy as np

from recstack.errors import RecstackError

# a task that dies with its worker (killed, out of memory, node lost) is run again this many times
TASK_RETRIES = 3


@dataclass(frozen=True)
class RaySettings:
    """Where the work runs: `address` None starts (or reuses) a local instance with `workers` CPUs;
    "auto", "host:port" or "ray://host:port" joins a running cluster. `workers` is how many blocks
    of users (or concurrent trials) are in flight at once."""

    address: str | None = None
    workers: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, (int, np.integer)) or self.workers < 1:
            raise RecstackError(f"ray workers must be an integer >= 1, got {self.workers!r}")


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RecstackError("the Ray backend needs Ray: pip install 'recstack[ray]' (or pip install 'ray[tune]')"
                            ) from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """'host:port' or 'ray://host:port' -> (host, port); None for 'auto' and 'local'."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not host:
        return None
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """Refuse an address nothing listens on, in one line, before Ray spends a minute retrying it."""
    if address in ("auto", "local"):
        return
    target = _host_port(address)
    if target is None:
        raise RecstackError(f"ray address {address!r} is not 'auto', 'host:port' or 'ray://host:port'")
    try:
        with socket.create_connection(target, timeout=timeout_s):
            pass
    except OSError as exc:
        raise RecstackError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); start one with "
                            "`ray start --head` there, or leave the address out for a local instance") from None


def connect(settings: RaySettings) -> Any:
    """Ray, initialised for `settings`: an instance that is already up in this process is reused
    (the tests start one for the session); otherwise a local one with `workers` CPUs, or the cluster."""
    ray = import_ray()
    if settings.address is not None:
        check_reachable(settings.address)
    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network calls from a run
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune prints no boxes into recstack's console
    common = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False,
              "ignore_reinit_error": True}
    if settings.address is None:
        ray.init(num_cpus=settings.workers, **common)
        return ray
    try:
        ray.init(address=settings.address, **common)
    except (ConnectionError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RecstackError(f"cannot join the Ray cluster at {settings.address} ({first}); check the address "
                            "(`ray status` on the head node prints it)") from None
    return ray


def put_writable(ray: Any, value: Any) -> Any:
    """`value` in the object store as pickled bytes, for `take_writable` in the task.

    Ray hands numpy arrays to a task zero-copy and read-only; a fitted model whose scoring writes
    into its own arrays, or hands them to a library that wants writable buffers (implicit's ALS
    fold-in does), would fail there. The model is therefore shipped as bytes and unpickled into
    arrays of the task's own (a copy per task, the size of the model); the interaction log, which
    evaluation only reads, stays zero-copy."""
    from ray import cloudpickle

    return ray.put(cloudpickle.dumps(value, protocol=5))


def take_writable(blob: bytes) -> Any:
    import pickle

    return pickle.loads(blob)


def __getattr__(name: str) -> Any:  # RayRanker without importing Ray for `import recstack.cluster`
    if name == "RayRanker":
        from recstack.cluster.evaluate import RayRanker

        return RayRanker
    raise AttributeError(name)
