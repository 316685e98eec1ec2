"""The harness: the command users run (``python -m harness``), experiment config, orchestration of the
testbed and the three nodes, repeats, sweeps, results files and the regression check."""

from harness._pins import PIN_VARIABLES, USER_PINS  # (first: before anything imports torch)
from harness.check import CheckReport, Comparison, compare
from harness.config import LinkOptions, RunConfig, config_from_dict, config_to_dict
from harness.errors import (
    ComponentFailure,
    ConfigError,
    HarnessError,
    NodeFailure,
    PortInUseError,
    ResultsError,
    UnshapedError,
)
from harness.results import (
    build_results,
    load_results,
    summarize_records,
    validate_results,
    write_results,
)

__all__ = [
    "PIN_VARIABLES",
    "USER_PINS",
    "CheckReport",
    "Comparison",
    "ComponentFailure",
    "ConfigError",
    "HarnessError",
    "LinkOptions",
    "NodeFailure",
    "PortInUseError",
    "ResultsError",
    "RunConfig",
    "UnshapedError",
    "build_results",
    "compare",
    "config_from_dict",
    "config_to_dict",
    "load_results",
    "summarize_records",
    "validate_results",
    "write_results",
]
