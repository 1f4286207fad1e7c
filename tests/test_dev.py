"""`dev.py`, the README's two commands: what its test runs select."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _dev():
    spec = importlib.util.spec_from_file_location("recstack_dev_script", ROOT / "dev.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cpu_reruns_collect_every_file_with_contract_tests():
    # the reruns under other CPU kinds' kernels collect only CONTRACT_FILES: a contract test in
    # another file would silently never run as an AVX2 or generic CPU
    marked = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "tests").rglob("test_*.py")
                    if re.search(r"pytest\.mark\.contract\b", path.read_text()))
    assert marked and sorted(_dev().CONTRACT_FILES) == marked


def test_parallel_workers_are_whole_files_with_one_thread_each(monkeypatch):
    dev = _dev()
    monkeypatch.setattr(dev.os, "cpu_count", lambda: 2)
    args, env = dev.parallel({"PATH": "/bin"})
    assert args == ["-n", "2", "--dist", "loadfile"] and env == {"OMP_NUM_THREADS": "1", "PATH": "/bin"}
    assert dev.parallel({"OMP_NUM_THREADS": "3"})[1]["OMP_NUM_THREADS"] == "3"  # the user's setting wins
    monkeypatch.setattr(dev.os, "cpu_count", lambda: 1)
    assert dev.parallel({"PATH": "/bin"}) == ([], {"PATH": "/bin"})
