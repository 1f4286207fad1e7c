"""The `recstack` command line: thin wrappers that parse, call library functions and print.

    recstack run [CONFIG] [--seeds N]           the default benchmark, or your YAML/TOML experiment
    recstack tune CONFIG [--n-trials N --study NAME]   Optuna search on valid, then a run of the best
    recstack recommend RUN_DIR --model L --user U [-k 10 --include-seen --trust-code]
    recstack recommend RUN_DIR --all-users --out recs.parquet [--model L -k 10]   every user's top-k at once
    recstack serve RUN_DIR [--model L ...] [--host 127.0.0.1 --port 8000 --events PATH --admin-token T]
    recstack compare RUN_DIR [RUN_DIR ...] [--metric NDCG@10 --test t --correction holm --baseline NAME]
    recstack data list | fetch NAME | info NAME
    recstack models

A mistake the user can fix (any `RecstackError`, or an invalid config) prints one red line
`error: ...` on stderr and exits with code 2; `--debug` adds the traceback. Anything else is a
bug and shows its traceback. SIGTERM stops `run` and `tune` as Ctrl-C does (nothing half-written
is left; exit code 143). The dataset cache is `--cache-dir`, else the config's `cache_dir`,
else $RECSTACK_DATA, else ~/.cache/recstack.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, Iterator, List, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from recstack.errors import RecstackError, RecstackWarning

app = typer.Typer(
    name="recstack",
    help="The recommender-systems stack: data, leakage-free splits, models, full-ranking evaluation, reports.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Named datasets: list, fetch, info.", no_args_is_help=True)
app.add_typer(data_app, name="data")

_DEBUG_HELP = "Show the full traceback of errors."
_CACHE_HELP = "Dataset cache folder (default: $RECSTACK_DATA, else ~/.cache/recstack)."
_TRUST_HELP = ("Import model classes the run names outside recstack's registry ('package.module:Class'), "
               "which runs their code: only for runs you wrote or whose sender you trust.")


def _console() -> Console:
    console = Console()
    if not console.is_terminal:
        console.width = 120  # piped or captured: no terminal width to respect, keep tables whole
    return console


def _fail(message: str) -> None:
    # one line, whatever the message held: a user error is a sentence, not a paragraph
    typer.secho(f"error: {' '.join(str(message).split())}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@contextlib.contextmanager
def _user_errors(debug: bool) -> Iterator[None]:
    """Turn user-fixable errors into one line and exit code 2 (traceback too with --debug).

    A `RecstackWarning` raised meanwhile prints as one line `warning: ...` on stderr.
    """
    with warnings.catch_warnings():  # puts the previous showwarning back on the way out
        warnings.showwarning = _one_line_warnings(warnings.showwarning)
        try:
            yield
        except (RecstackError, ValidationError) as exc:
            if debug:
                traceback.print_exc(file=sys.stderr)
            if isinstance(exc, ValidationError):
                from recstack.experiment.config import format_validation_error

                _fail(format_validation_error(exc, exc.title))
            _fail(str(exc))


def _one_line_warnings(show: Any) -> Any:
    def one_line(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, RecstackWarning):
            typer.secho(f"warning: {' '.join(str(message).split())}", fg=typer.colors.YELLOW, err=True)
        else:
            show(message, category, filename, lineno, file, line)

    return one_line


class _Terminated(SystemExit):
    """SIGTERM, raised where the program is, so that every `with` and `finally` cleans up as for Ctrl-C."""


@contextlib.contextmanager
def _sigterm_cleans_up() -> Iterator[None]:
    """SIGTERM (kill, a scheduler, a container stop) unwinds like Ctrl-C instead of ending the process
    on the spot, so an unfinished run's hidden temporary directory is removed; exit code 128 + 15."""

    def stop(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
        raise _Terminated(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread (recstack embedded in another program): its signals, its rules
        yield
        return
    try:
        yield
    except _Terminated:
        typer.secho("stopped by SIGTERM; nothing half-written was left behind", err=True)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


_BACKEND_HELP = ("local (this process) or ray: evaluation, trials and batch scoring as Ray tasks on a local Ray "
                 "instance or --address (docs/scale.md); the config's 'ray' section sets it too.")
_ADDRESS_HELP = "With --backend ray: a cluster to join ('auto', host:port, ray://host:port); default a local instance."
_WORKERS_HELP = "With --backend ray: blocks of users (or trials) in flight at once, and a local instance's CPUs."


# ---- run --------------------------------------------------------------------------------------

@app.command()
def run(
    config: Optional[Path] = typer.Argument(None, help="Experiment config (.yaml/.yml/.toml); none: the default "
                                                       "benchmark (ml-100k, eight models)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Folder for run directories."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Override the config's seed."),
    n_seeds: Optional[int] = typer.Option(None, "--seeds", help="Train every model with N seeds: seed, seed+1, ..., "
                                          "seed+N-1 (seed: --seed, else the config's); overrides the config's "
                                          "'seeds'. See docs/experiments.md."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help=_CACHE_HELP),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Exact run directory (must not exist, or be "
                                                                   "empty)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the run directory."),
    only: Optional[list[str]] = typer.Option(None, "--only", help="Run only the model entries with this label "
                                                                 "(repeatable), e.g. to split a long file."),
    backend: Optional[str] = typer.Option(None, "--backend", help=_BACKEND_HELP),
    address: Optional[str] = typer.Option(None, "--address", help=_ADDRESS_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", help=_WORKERS_HELP),
    debug: bool = typer.Option(False, "--debug", help=_DEBUG_HELP),
) -> None:
    """Run an experiment: data -> split -> fit -> evaluate -> run directory with a report."""
    from recstack.experiment.config import default_config, load_config, parse_config
    from recstack.experiment.run import run_experiment

    with _sigterm_cleans_up(), _user_errors(debug):
        experiment = load_config(config) if config is not None else default_config()
        source = str(config) if config is not None else "default.yaml (packaged)"
        overrides: dict[str, Any] = {}
        if output_dir is not None:
            overrides["output_dir"] = str(output_dir)
        if seed is not None:
            overrides["seed"] = seed
        if n_seeds is not None:
            overrides["seeds"] = _seed_list(experiment.seed if seed is None else seed, n_seeds)
        if cache_dir is not None:
            overrides["cache_dir"] = str(cache_dir)
        if only:
            if not hasattr(experiment, "models"):
                raise RecstackError(f"--only picks model entries, and {source} (task: llm) has none; edit its "
                                    "rating and rerank sections instead")
            overrides["models"] = _select_models(experiment.models, only)
        overrides.update(_ray_overrides(experiment, backend, address, workers))
        if overrides:
            experiment = parse_config(experiment.model_copy(update=overrides),
                                      f"{source} with the command-line options")
        experiment.check_devices(source)
        result = run_experiment(experiment, run_dir=run_dir, progress=not quiet, console=_console())
        if quiet:
            typer.echo(str(result.run_dir))


def _ray_overrides(experiment: Any, backend: Optional[str], address: Optional[str], workers: Optional[int]
                   ) -> dict[str, Any]:
    """--backend/--address/--workers as an override of the config's `ray` section (None: local)."""
    from recstack.experiment.config import RayConfig

    if backend not in (None, "local", "ray"):
        raise RecstackError(f"--backend {backend!r}: choose local or ray")
    if backend is None and getattr(experiment, "ray", None) is not None:
        backend = "ray"  # the config asks for Ray; --address/--workers adjust it
    if backend != "ray":
        if address is not None or workers is not None:
            raise RecstackError("--address and --workers go with --backend ray")
        return {"ray": None} if backend == "local" and getattr(experiment, "ray", None) is not None else {}
    current = getattr(experiment, "ray", None) or RayConfig()
    changes = {key: value for key, value in (("address", address), ("workers", workers)) if value is not None}
    return {"ray": current.model_copy(update=changes)}


def _seed_list(first: int, n: int) -> list[int]:
    """`--seeds N`: the N consecutive seeds from `first` (the first repetition is the single-seed run)."""
    if n < 1:
        raise RecstackError(f"--seeds takes the number of seeds (1 or more), got {n}")
    return list(range(first, first + n))


def _select_models(models: list, labels: list[str]) -> list:
    """The entries of `models` whose display label is in `labels`, in the file's order."""
    known = [entry.display for entry in models]
    unknown = [label for label in labels if label not in known]
    if unknown:
        raise RecstackError(f"--only {unknown[0]!r} matches no model entry of the config; its labels are: "
                            f"{', '.join(known)}")
    return [entry for entry in models if entry.display in labels]


# ---- tune -------------------------------------------------------------------------------------

@app.command()
def tune(
    config: Path = typer.Argument(..., help="Experiment config with a 'tune' section (model, space, n_trials)."),
    n_trials: Optional[int] = typer.Option(None, "--n-trials", help="Finished trials the study should hold "
                                           "(overrides tune.n_trials; trials already run count)."),
    study: Optional[str] = typer.Option(None, "--study", help="Name the study (default: derived from its definition: "
                                        "space, metric, params, data, split); a named study resumes only with the "
                                        "definition it was made with."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Folder for the study and the run."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help=_CACHE_HELP),
    backend: Optional[str] = typer.Option(None, "--backend", help="local (Optuna in this process) or ray (Ray Tune "
                                          "trials, Optuna searching, the same study; docs/scale.md); default: ray "
                                          "when the config has a 'ray' section."),
    address: Optional[str] = typer.Option(None, "--address", help=_ADDRESS_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", help="With --backend ray: trials at once (and a "
                                          "local instance's CPUs)."),
    debug: bool = typer.Option(False, "--debug", help=_DEBUG_HELP),
) -> None:
    """Search hyper-parameters with Optuna on the validation part, then run the best setting."""
    from recstack.experiment.config import load_config
    from recstack.experiment.tune import tune as run_tune

    with _sigterm_cleans_up(), _user_errors(debug):
        experiment = load_config(config)
        experiment.check_devices(str(config))
        overrides: dict[str, Any] = {}
        if output_dir is not None:
            overrides["output_dir"] = str(output_dir)
        if cache_dir is not None:
            overrides["cache_dir"] = str(cache_dir)
        overrides.update(_ray_overrides(experiment, backend, address, workers))
        if overrides:
            experiment = experiment.model_copy(update=overrides)
        console = _console()
        result = run_tune(experiment, n_trials=n_trials, study=study, console=console)
        for line in result.summary():
            console.print(line, markup=False, highlight=False, soft_wrap=True)


# ---- recommend --------------------------------------------------------------------------------

@app.command()
def recommend(
    run_dir: Path = typer.Argument(..., help="A run directory written by `recstack run`."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model label in the run (e.g. ease); with "
                                                                   "--all-users, default: every saved model."),
    user: Optional[str] = typer.Option(None, "--user", "-u", help="Raw user id as in the data."),
    k: int = typer.Option(10, "-k", "--k", help="Number of recommendations."),
    include_seen: bool = typer.Option(False, "--include-seen", help="Rank the items the user already rated too."),
    all_users: bool = typer.Option(False, "--all-users", help="Every user's top-k, scored in blocks, written to "
                                                              "--out (cold users get the run's fallback, flagged)."),
    out: Optional[Path] = typer.Option(None, "--out", help="With --all-users: the .parquet file to write (model, "
                                                           "user_id, rank, item_id, score, fallback)."),
    trust_code: bool = typer.Option(False, "--trust-code", help=_TRUST_HELP),
    backend: Optional[str] = typer.Option(None, "--backend", help="With --all-users: local, or ray (blocks of users "
                                          "ranked by Ray tasks, each writing its part of --out FOLDER as "
                                          "partitioned Parquet)."),
    address: Optional[str] = typer.Option(None, "--address", help=_ADDRESS_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", help=_WORKERS_HELP),
    debug: bool = typer.Option(False, "--debug", help=_DEBUG_HELP),
) -> None:
    """Top-k items for one user by a model of a finished run (items the user rated are excluded
    unless --include-seen), or for every user with --all-users --out FILE.parquet."""
    from recstack.experiment.run import recommend as recommend_items

    if all_users:
        with _user_errors(debug):
            ray = _ray_overrides(None, backend, address, workers).get("ray")
        _recommend_all(run_dir, model, user, k, include_seen, out, trust_code, debug, ray)
        return
    if backend is not None or address is not None or workers is not None:
        with _user_errors(debug):
            raise RecstackError("--backend, --address and --workers go with --all-users")
    with _user_errors(debug):
        if model is None or user is None or out is not None:
            raise RecstackError("give --model and --user for one user's list, or --all-users --out FILE.parquet "
                                "for every user's")
        rows = recommend_items(run_dir, model, user, k, include_seen=include_seen, trust=trust_code)
        table = Table(title=f"top {k} for user {user} by {model}")
        columns = list(rows[0]) if rows else ["rank", "item_id", "score"]
        for column in columns:
            numeric = column in ("rank", "score", "year")
            table.add_column(column.replace("_", " "), justify="right" if numeric else "left")
        for row in rows:
            table.add_row(*[_show(row[c], c) for c in columns])
        console = _console()
        console.print(table)
        if len(rows) < k:  # a short list otherwise reads like a bug
            console.print(f"only {len(rows)} of {k}: {model} can score no other "
                          f"{'' if include_seen else 'unseen '}item for user {user}", soft_wrap=True, markup=False)


def _recommend_all(run_dir: Path, model: Optional[str], user: Optional[str], k: int, include_seen: bool,
                   out: Optional[Path], trust_code: bool, debug: bool, ray: Any = None) -> None:
    with _user_errors(debug):
        if out is None or user is not None:
            raise RecstackError("--all-users writes every user's list to a file: give --out FILE.parquet "
                                "(and no --user)")
        from recstack.serve.batch import recommend_all

        settings = None
        if ray is not None:
            from recstack.cluster import RaySettings

            settings = RaySettings(ray.address, ray.workers)
        seconds = recommend_all(run_dir, out, labels=[model] if model else None, k=k, include_seen=include_seen,
                                trust=trust_code, ray=settings)
        timing = ", ".join(f"{label} {s:.1f} s" for label, s in seconds.items())
        typer.echo(f"wrote the top {k} of every user to {out} ({timing})")


# ---- serve ------------------------------------------------------------------------------------

@app.command()
def serve(
    run_dir: Path = typer.Argument(..., help="A run directory written by `recstack run`."),
    model: Optional[List[str]] = typer.Option(None, "--model", "-m", help="Serve only this model label "
                                                                          "(repeatable; default: every saved model)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default: this machine only)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    events: Optional[Path] = typer.Option(None, "--events", help="SQLite file of posted events (default: "
                                                                 "events.sqlite next to the run directory)."),
    admin_token: Optional[str] = typer.Option(None, "--admin-token", envvar="RECSTACK_ADMIN_TOKEN",
                                              help="Token of the admin routes (reload, export); without one they "
                                                   "are off. Prefer $RECSTACK_ADMIN_TOKEN: a flag shows in `ps`."),
    trust_code: bool = typer.Option(False, "--trust-code", help=_TRUST_HELP),
    ann_min_items: int = typer.Option(50_000, "--ann-min-items", min=1,
                                      help="Dot-product models over at least this many items retrieve with an HNSW "
                                           "index (faiss), re-scored exactly; below it, exact ranking."),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes on the one port, each with its own copy "
                                                           "of the models; they share the event store."),
    debug: bool = typer.Option(False, "--debug", help=_DEBUG_HELP),
) -> None:
    """Answer recommendation requests over HTTP (FastAPI under uvicorn) from a run's saved models;
    take live events; open http://HOST:PORT/ for the page, /docs for the API. Needs the 'serve' extra."""
    with _user_errors(debug):
        try:
            from recstack.serve.app import serve as run_server
        except ImportError as exc:
            raise RecstackError(f"`recstack serve` needs the serve extra ({exc.name} is missing): "
                                "pip install 'recstack[serve]'") from None
        run_server(run_dir, labels=model or None, host=host, port=port, events=events, admin_token=admin_token,
                   trust=trust_code, ann_min_items=ann_min_items, workers=workers)


@app.command("llm-serve")
def llm_serve(
    model: str = typer.Option("smollm2", "--model", "-m", help="A named model (smollm2) or a path: a Hugging Face "
                                                               "causal LM folder or a GGUF file."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default: this machine only)."),
    port: int = typer.Option(8001, "--port", help="TCP port."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch threads (default: torch's)."),
    debug: bool = typer.Option(False, "--debug", help=_DEBUG_HELP),
) -> None:
    """Serve a local language model behind the OpenAI-compatible completions API (greedy decoding,
    echo + logprobs), for recstack's HTTP LLM backend or any OpenAI client. Needs the 'llm' extra."""
    with _user_errors(debug):
        try:
            import fastapi  # noqa: F401 - checked here so a missing extra is one line, not a traceback
            import uvicorn  # noqa: F401

            from recstack.llm.server import serve as run_llm_server
        except ImportError as exc:
            raise RecstackError(f"`recstack llm-serve` needs the llm extra ({exc.name} is missing): "
                                "pip install 'recstack[llm]'") from None
        run_llm_server(model, host=host, port=port, threads=threads, log=typer.echo)


# ---- compare ----------------------------------------------------------------------------------

@app.command()
def compare(
    run_dirs: List[Path] = typer.Argument(..., help="One or more run directories with the same split."),
    metric: Optional[str] = typer.Option(None, "--metric", help="Per-user metric (default: the run's "
                                                                "valid_metric, e.g. NDCG@10); CTR runs: AUC "
                                                                "(default, DeLong), gAUC or LogLoss."),
    test: str = typer.Option("t", "--test", help="Paired test: t, wilcoxon or permutation."),
    correction: str = typer.Option("holm", "--correction", help="Across comparisons: holm, bh or none."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Compare against this model (default: "
                                                                    "the best)."),
    alpha: float = typer.Option(0.05, "--alpha", help="Significance level for the * marker."),
    part: str = typer.Option("test", "--part", help="Evaluated part: test or valid."),
    n_resamples: int = typer.Option(10_000, "--n-resamples", help="Sign flips of the permutation test."),
    seed: int = typer.Option(0, "--seed", help="Seed of the permutation test and the bootstrap."),
    markdown: bool = typer.Option(False, "--markdown", help="Print a markdown table instead."),
    debug: bool = typer.Option(False, "--debug", help=_DEBUG_HELP),
) -> None:
    """Paired significance tests between the models of one or more runs (per-user values); multi-seed
    runs (same seeds) get a test over seeds next to the per-user tests of each seed. CTR runs pair their
    test predictions row by row."""
    from recstack.experiment.compare import compare_runs

    with _user_errors(debug):
        result = compare_runs(run_dirs, metric, baseline=baseline, test=test, alpha=alpha, part=part,
                              correction=None if correction.lower() == "none" else correction,
                              n_resamples=n_resamples, seed=seed)
        if markdown:
            typer.echo(result.to_markdown(), nl=False)
        else:
            _console().print(result.table())


def _show(value: Any, column: str) -> str:
    if column == "score":
        return f"{value:.4f}"
    if column == "year" and isinstance(value, int) and value < 0:
        return ""
    return str(value)


# ---- data -------------------------------------------------------------------------------------

@data_app.command("list")
def data_list(debug: bool = typer.Option(False, "--debug", help=_DEBUG_HELP)) -> None:
    """List the named datasets."""
    from recstack.data.datasets import list_datasets

    with _user_errors(debug):
        entries = list_datasets()
        columns = list(dict.fromkeys(key for entry in entries for key in entry))
        table = Table(title="datasets")
        for column in columns:
            table.add_column(column)
        for entry in entries:
            table.add_row(*[_text(entry.get(column, "")) for column in columns])
        _console().print(table)


@data_app.command("fetch")
def data_fetch(
    name: str = typer.Argument(..., help="Dataset name (see `recstack data list`)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help=_CACHE_HELP),
    force: bool = typer.Option(False, "--force", help="Download again even if cached."),
    debug: bool = typer.Option(False, "--debug", help=_DEBUG_HELP),
) -> None:
    """Download a named dataset into the cache (checksum-verified) and print where it is."""
    from recstack.data.datasets import fetch

    with _user_errors(debug):
        path = fetch(name, cache_dir=cache_dir, force=force)
        typer.echo(str(path))


@data_app.command("info")
def data_info(
    name: str = typer.Argument(..., help="Dataset name (see `recstack data list`)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help=_CACHE_HELP),
    debug: bool = typer.Option(False, "--debug", help=_DEBUG_HELP),
) -> None:
    """Statistics of a named dataset: size, density, popularity concentration, sequence lengths."""
    from recstack.data.datasets import dataset_info

    with _user_errors(debug):
        info = dataset_info(name, cache_dir=cache_dir)
        table = Table(title=name)
        table.add_column("statistic")
        table.add_column("value")
        for key, value in _flatten(info).items():
            table.add_row(key, _text(value))
        _console().print(table)


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


# ---- models -----------------------------------------------------------------------------------

@app.command()
def models() -> None:
    """List the registered models (any 'package.module:Class' works in a config too)."""
    from recstack.models import MODELS

    table = Table(title="models")
    table.add_column("name")
    table.add_column("class")
    for name, target in MODELS.items():
        table.add_row(name, target)
    _console().print(table)


def main() -> None:
    """Entry point of the `recstack` console script."""
    app(prog_name="recstack")


if __name__ == "__main__":
    main()
