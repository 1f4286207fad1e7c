"""The machine a benchmark ran on: CPU model and SIMD flags, BLAS libraries, thread counts.

Every script here that prints a speed figure calls `print_machine()` first (after it has set its
thread counts), so that a table copied into BENCHMARKS.md can name the CPU kind (AVX2 only,
AVX-512, AMX), which BLAS each library multiplies with (numpy: OpenBLAS; torch: usually MKL) and
how many threads each used. A ratio between two libraries often moves with exactly these.

    .venv/bin/python benchmarks/machine.py          # the lines alone, then the JSON
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

# the flags of /proc/cpuinfo that decide which kernels the BLAS libraries pick
SIMD_FLAGS = ("fma", "avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
              "amx_int8")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def cpu(cpuinfo: str | None = None) -> dict[str, Any]:
    """CPU model, logical and usable cores, and which of `SIMD_FLAGS` the CPU has (Linux: /proc/cpuinfo).

    `avx2`, `avx512` and `amx` summarise the flags; they are None where the flags cannot be read."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    flags_line = re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    flags = set(flags_line.group(1).split()) if flags_line else None
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "model": model.group(1).strip() if model else (platform.processor() or platform.machine() or "unknown"),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "flags": None if flags is None else sorted(flag for flag in SIMD_FLAGS if flag in flags),
        "avx2": None if flags is None else "avx2" in flags,
        "avx512": None if flags is None else "avx512f" in flags,
        "avx512_bf16": None if flags is None else "avx512_bf16" in flags,
        "amx": None if flags is None else bool({"amx_tile", "amx_bf16"} & flags),
    }


def _owner(filepath: str) -> str:
    """The Python package a native library was loaded from (numpy, scipy, torch), from its path."""
    parts = Path(filepath).parts
    for part in reversed(parts):
        name = part.removesuffix(".libs")
        if name in {"numpy", "scipy", "torch", "sklearn", "implicit"}:
            return name
    return Path(filepath).name


def thread_pools() -> list[dict[str, Any]]:
    """The native thread pools loaded in this process (threadpoolctl), with the package that owns each."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [{"owner": _owner(pool.get("filepath", "")), "api": pool.get("user_api"),
             "library": pool.get("internal_api"), "version": pool.get("version"),
             "threads": pool.get("num_threads"), "architecture": pool.get("architecture")}
            for pool in threadpool_info()]


def numpy_blas() -> dict[str, Any]:
    """numpy's version, the BLAS it was built with (`np.show_config`) and its runtime threads."""
    import numpy as np

    try:
        built = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    except TypeError:  # numpy < 1.26 has no mode=
        built = {}
    pool = next((p for p in thread_pools() if p["owner"] == "numpy" and p["api"] == "blas"), {})
    return {"version": np.__version__, "blas": built.get("name"), "blas_version": built.get("version"),
            "library": pool.get("library"), "kernels": pool.get("architecture"), "threads": pool.get("threads")}


def torch_blas() -> dict[str, Any] | None:
    """torch's version, BLAS (`torch.__config__.show()`: BLAS_INFO, MKL version), SIMD level and threads;
    None when torch is not installed."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    shown = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=([^,\s]+)", shown)
    capability = re.search(r"CPU capability usage:\s*(\S+)", shown)
    mkl = re.search(r"Math Kernel Library Version ([\w.]+)", shown)
    return {"version": torch.__version__, "blas": blas.group(1) if blas else None,
            "mkl_version": mkl.group(1) if mkl else None, "cpu_capability": capability.group(1) if capability else None,
            "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads()}


def describe() -> dict[str, Any]:
    """Everything `print_machine` prints, as one dict: cpu, numpy, torch, thread_pools, environment, python."""
    return {"cpu": cpu(), "numpy": numpy_blas(), "torch": torch_blas(), "thread_pools": thread_pools(),
            "environment": {name: os.environ.get(name) for name in THREAD_VARIABLES},
            "python": platform.python_version(), "platform": platform.platform()}


def _yes(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


def lines(info: dict[str, Any]) -> list[str]:
    """The human-readable summary of `describe()`, one line per subject."""
    c, n, t = info["cpu"], info["numpy"], info["torch"]
    flags = " ".join(c["flags"]) if c["flags"] is not None else "unreadable"
    out = [f"machine: {c['model']}; {c['logical_cpus']} logical CPUs, {c['usable_cpus']} usable; "
           f"AVX2 {_yes(c['avx2'])}, AVX-512 {_yes(c['avx512'])}, AVX-512 BF16 {_yes(c['avx512_bf16'])}, "
           f"AMX {_yes(c['amx'])} (flags: {flags})",
           f"numpy {n['version']}: BLAS {n['blas'] or n['library'] or 'unknown'} {n['blas_version'] or ''}".rstrip()
           + f" (runtime {n['library'] or 'unknown'}, kernels {n['kernels'] or 'unknown'}), {n['threads']} threads"]
    if t is None:
        out.append("torch: not installed")
    else:
        mkl = f" {t['mkl_version']}" if t["mkl_version"] and t["blas"] == "mkl" else ""
        out.append(f"torch {t['version']}: BLAS {t['blas']}{mkl} (CPU capability {t['cpu_capability']}), "
                   f"{t['threads']} intra-op / {t['interop_threads']} inter-op threads")
    pools = [f"{p['owner']} {p['library']} {p['version'] or ''}".rstrip() + f": {p['threads']}"
             for p in info["thread_pools"]]
    out.append("native thread pools: " + ("; ".join(pools) if pools else "threadpoolctl not installed"))
    out.append("thread variables: " + ", ".join(f"{k}={v if v is not None else 'unset'}"
                                                 for k, v in info["environment"].items()))
    return out


def print_machine(*notes: str, file=None) -> dict[str, Any]:
    """Print the machine lines (and `notes`, e.g. the thread settings of each side) and return `describe()`.

    Call it after the script has set its thread counts: the counts printed are those in force then."""
    info = describe()
    for line in [*lines(info), *notes]:
        print(line, file=file or sys.stdout)
    sys.stdout.flush()
    return info


if __name__ == "__main__":
    print(json.dumps(print_machine(), indent=1))
