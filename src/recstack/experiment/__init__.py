"""Experiments: a validated config, the one run flow, and the report of a run directory."""

from recstack.experiment.config import (
    ExperimentConfig,
    ExperimentConfigError,
    default_config,
    load_config,
    parse_config,
)
from recstack.experiment.report import write_report
from recstack.experiment.run import LoadedRun, RunResult, load_run, prepare_data, recommend, run_experiment

__all__ = [
    "ExperimentConfig", "ExperimentConfigError", "LoadedRun", "RunResult", "default_config", "load_config",
    "load_run", "parse_config", "prepare_data", "recommend", "run_experiment", "write_report",
]
