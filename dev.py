#!/usr/bin/env python3
"""Set up recstack in ./.venv (idempotent) and run the default benchmark or the test suite.

    python3 dev.py benchmark   # set up, then `recstack run` (ml-100k default benchmark)
    python3 dev.py test        # set up, then the whole suite (one pytest-xdist worker per core), then
                               # the contract tests as other CPUs
    python3 dev.py test --cpu avx2 [PYTEST ARGS]   # the whole suite as an AVX2-only CPU would run it

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

# Kernel levels of the CPU kinds the suite must pass on. float32 results move in the last bits with
# the kernel (a row's rounding can depend on its position in a GEMM block), so the contract tests
# are re-run with torch (ATen), MKL (torch's GEMM) and OpenBLAS (numpy's) forced down to each level.
# The contract checks that compare scores of one fitted model (which is where kernels round apart);
# the lifecycle-only ones (fit returns self, refit, a config typo, the epoch history, module paths)
# and the repeat-fit determinism check cannot depend on the kernel level and would only add fits
# to CI's time: the native pass runs them all.
PORTABLE_CHECKS = ("not fit_returns_self and not refit_replaces_state and not config_is_frozen "
                   "and not same_seed_same_scores and not training_history and not build_from_module_path "
                   "and not score_before_fit")
# the files whose tests carry the `contract` marker (tests/test_testing.py checks this list)
CONTRACT_FILES = ("tests/contract/test_contract.py", "tests/models/test_multvae.py")
CPU_PROFILES: dict[str, dict[str, str]] = {
    # NUMBA_CPU_NAME: numba's kernels (top-k, LearnBPR) compiled for that CPU too
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "OPENBLAS_CORETYPE": "Haswell",
             "NUMBA_CPU_NAME": "haswell"},
    "generic": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
                "OPENBLAS_CORETYPE": "Prescott", "NUMBA_CPU_NAME": "generic"},
}


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


def cpu_environment(profile: str, env: dict[str, str]) -> dict[str, str] | None:
    """`env` with the kernel variables of `profile`, or None when this CPU cannot run that level.

    An OPENBLAS_CORETYPE the machine already sets is kept: some hosts set it because other
    OpenBLAS kernels crash there."""
    if profile not in CPU_PROFILES:
        sys.exit(f"unknown --cpu {profile!r}; choose one of: {', '.join(CPU_PROFILES)}")
    if profile == "avx2" and not _cpu_has("avx2"):
        return None
    wanted = dict(CPU_PROFILES[profile])
    if env.get("OPENBLAS_CORETYPE"):
        wanted.pop("OPENBLAS_CORETYPE")
    return {**env, **wanted}


def _cpu_has(flag: str) -> bool:
    try:
        return any(flag in line.split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("flags"))
    except OSError:  # not Linux: assume a current x86-64
        return True


def parallel(env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """pytest-xdist arguments and environment for the suite's own runs: one worker per core (at most
    4), whole files per worker (a file's tests share fixtures and fitted models), and one BLAS/torch
    thread per worker so that workers do not oversubscribe the cores (OpenMP threads that spin while
    another process holds their core slow a run several-fold). The suite is mostly one thread of
    Python, so two workers on two cores take about two thirds of the time of one process."""
    workers = min(4, os.cpu_count() or 1)
    if workers < 2:
        return [], env
    return ["-n", str(workers), "--dist", "loadfile"], {"OMP_NUM_THREADS": "1", **env}


def pytest(args: list[str], env: dict[str, str], label: str = "") -> int:
    if label:
        shown = " ".join(f"{k}={v}" for k, v in env.items() if k in CPU_PROFILES["avx2"])
        print(f"\n== {label}: {shown}", flush=True)
    return subprocess.call([str(PYTHON), "-m", "pytest", "-q", *args], cwd=ROOT, env=env)


def test(rest: list[str], env: dict[str, str]) -> int:
    """The whole suite; with no arguments (the README's and CI's command) the contract tests then run
    again under every CPU profile. `--cpu NAME` runs the given pytest arguments under that profile only."""
    ensure_chromium()
    if rest[:1] == ["--cpu"] or (rest and rest[0].startswith("--cpu=")):
        profile = rest[1] if rest[0] == "--cpu" and len(rest) > 1 else rest[0].partition("=")[2]
        rest = rest[2:] if rest[0] == "--cpu" else rest[1:]
        forced = cpu_environment(profile, env)
        if forced is None:
            sys.exit(f"this CPU has no {profile.upper()}, so it cannot run as an {profile} machine")
        return pytest(rest, forced, f"whole suite as a {profile} CPU")
    if rest:
        return pytest(rest, env)
    workers, env = parallel(env)
    status = pytest(workers, env)
    for profile in CPU_PROFILES:
        forced = cpu_environment(profile, env)
        if forced is None:
            print(f"\n== contract tests as a {profile} CPU: skipped, this CPU has no {profile.upper()}", flush=True)
            continue
        # only the files that hold contract tests are collected: collecting the whole suite costs more
        # than the checks it would deselect
        status = pytest([*workers, "-m", "contract", "-k", PORTABLE_CHECKS, "-p", "no:cacheprovider",
                         *CONTRACT_FILES], forced, f"contract tests as a {profile} CPU") or status
    return status


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
        return test(rest, env)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
