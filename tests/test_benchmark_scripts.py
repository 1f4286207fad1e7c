"""Fast checks of the benchmark scripts (issue 19): they start, describe the machine, find the peer
environment only from options or variables, and compare like with like. No measurement runs here."""

from __future__ import annotations

import importlib
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# the scripts that print a speed figure, hence the machine description
SPEED_SCRIPTS = ["eval_throughput", "als_vs_implicit", "lightgcn_vs_recbole", "against_recbole", "sasrec_vs_recbole",
                 "fit_times", "bpr_throughput", "refactor_speed", "generative_cost", "semantic_ids", "dnis_tradeoff",
                 "dsl_density", "peak_memory", "train_windows", "ray_scale", "scale_run", "ctr_vs_fuxictr",
                 "ctr_vs_recbole"]


@pytest.fixture
def bench(monkeypatch):
    """Import a module of benchmarks/ by name (the scripts import their siblings by plain name)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module


@pytest.mark.parametrize("script", SPEED_SCRIPTS)
def test_help_runs_and_the_script_describes_the_machine(script, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(BENCHMARKS / f"{script}.py"), run_name="__main__")
    assert done.value.code == 0
    assert "usage:" in capsys.readouterr().out
    assert "print_machine(" in (BENCHMARKS / f"{script}.py").read_text()


def test_machine_description_has_the_cpu_blas_and_threads(bench):
    machine = bench("machine")
    info = machine.describe()
    assert set(info) >= {"cpu", "numpy", "torch", "thread_pools", "environment"}
    assert set(info["cpu"]) >= {"model", "logical_cpus", "usable_cpus", "flags", "avx2", "avx512", "amx"}
    assert set(info["numpy"]) >= {"version", "blas", "threads"}
    assert info["torch"] is None or set(info["torch"]) >= {"version", "blas", "threads", "cpu_capability"}
    assert set(info["environment"]) == {"OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"}
    text = "\n".join(machine.lines(info))
    for word in ("machine:", "AVX2", "AVX-512", "AMX", "numpy", "threads"):
        assert word in text


def test_cpu_flags_are_read_from_cpuinfo(bench):
    cpu = bench("machine").cpu
    avx2_only = cpu("model name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx avx2 fma\n")
    assert avx2_only["model"] == "AMD EPYC 7B13"
    assert (avx2_only["avx2"], avx2_only["avx512"], avx2_only["amx"]) == (True, False, False)
    sapphire = cpu("model name : Xeon\nflags : avx2 avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert (sapphire["avx512"], sapphire["avx512_bf16"], sapphire["amx"]) == (True, True, True)
    assert cpu("")["avx2"] is None  # no /proc/cpuinfo: unknown, not "no"


def test_peer_scripts_name_the_option_and_the_variable_when_the_peer_is_missing(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.delenv("RECSTACK_PEER_PYTHON", raising=False)
    monkeypatch.delenv("RECSTACK_PEERS_DIR", raising=False)
    monkeypatch.setattr(sys, "argv", ["lightgcn_vs_recbole.py", "--datasets", "ml-100k"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(BENCHMARKS / "lightgcn_vs_recbole.py"), run_name="__main__")
    assert done.value.code == 2
    error = capsys.readouterr().err
    for name in ("--peer-python", "RECSTACK_PEER_PYTHON", "--peers-dir", "RECSTACK_PEERS_DIR"):
        assert name in error


def test_peer_options_come_from_the_variables(bench, monkeypatch, tmp_path):
    peer_env = bench("peer_env")
    python, driver = tmp_path / "python", tmp_path / "run_recbole.py"
    python.write_text("")
    assert peer_env.missing_peers_dir(tmp_path) is not None  # no driver in it yet
    driver.write_text("")
    monkeypatch.setenv("RECSTACK_PEER_PYTHON", str(python))
    monkeypatch.setenv("RECSTACK_PEERS_DIR", str(tmp_path))
    parser = __import__("argparse").ArgumentParser()
    peer_env.add_peer_options(parser)
    args = parser.parse_args([])
    peer_env.resolve_peer(parser, args)
    assert (args.peer_python, args.peers_dir) == (str(python), tmp_path.resolve())
    assert "--peer-python" in peer_env.missing_peer_python(str(tmp_path / "absent"))


@pytest.mark.parametrize("script", sorted(path.name for path in BENCHMARKS.glob("*.py")))
def test_no_benchmark_has_a_machine_specific_default(script):
    """No absolute path a user must have: no home or workspace folder, no /tmp default (a path the user
    passes in an example command, like `--out /tmp/windows`, is theirs to choose)."""
    text = (BENCHMARKS / script).read_text()
    for path in ("/work/", "/home/", 'default="/tmp', "default=Path(\"/tmp", "default='/tmp"):
        assert path not in text, f"{script} has a machine-specific path or default ({path!r})"


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_eval_throughput_reference_uses_the_library_of_the_path_under_test(bench, library):
    if library == "torch":
        pytest.importorskip("torch")
    eval_throughput = bench("eval_throughput")
    model, _, _ = eval_throughput.make_case(50, 8, 4, np.random.default_rng(0), library)
    assert eval_throughput.scoring_library(model) == library
    libraries = eval_throughput.reference_libraries(model)
    assert libraries["gemm"] == library
    product, prepare = eval_throughput.gemm(libraries["gemm"])
    users, items_t = prepare(model.user_factors, model.item_factors)
    scores = product(users[:8], items_t)
    assert eval_throughput.library_of(scores) == eval_throughput.library_of(model.score(np.arange(8), None))
    np.testing.assert_allclose(np.asarray(scores), model.user_factors @ model.item_factors.T, rtol=1e-5)
    # the reference's library top-k finds recstack's k items per row (no ties in random floats)
    from recstack.topk import top_k_items

    assert libraries["topk"] == ("torch" if importlib.util.find_spec("torch") else "numpy")
    ours, _ = top_k_items(np.asarray(scores, dtype=np.float32), 5)
    theirs = eval_throughput.raw_topk(libraries["topk"])(scores, 5)[1 if libraries["topk"] == "torch" else 0]
    assert (np.sort(ours, axis=1) == np.sort(np.asarray(theirs), axis=1)).all()
