"""The contract between the packages: the error root, the atomic write, the shared names and rules, and
the typed, versioned documents that cross package lines (the test node's records, the results file).

It imports only the standard library (numpy only for the types of :func:`exits_locally`), never torch,
so that every package -- and every light program, such as the test node or a delay line -- can import
it at no cost.
"""

from contract.atomic import atomic_open, write_atomic, write_json_atomic
from contract.errors import LocalExitError, SchemaError
from contract.jsonfile import read_json
from contract.records import BatchTimes, Overall, Records, Samples, read_records
from contract.results import (
    SUMMARY_FIELDS,
    VERSION_HISTORY,
    Aggregate,
    Distribution,
    Resource,
    Results,
    ResultsConfig,
    Run,
    SamplesFile,
    ScheduleRecord,
    Summary,
    read_results,
    results_version,
    write_results,
)
from contract.rules import check_batch_size, check_model_exit, check_threshold, exits_locally

__all__ = [
    "SUMMARY_FIELDS",
    "VERSION_HISTORY",
    "Aggregate",
    "BatchTimes",
    "Distribution",
    "LocalExitError",
    "Overall",
    "Records",
    "Resource",
    "Results",
    "ResultsConfig",
    "Run",
    "Samples",
    "SamplesFile",
    "ScheduleRecord",
    "SchemaError",
    "Summary",
    "atomic_open",
    "check_batch_size",
    "check_model_exit",
    "check_threshold",
    "exits_locally",
    "read_json",
    "read_records",
    "read_results",
    "results_version",
    "write_atomic",
    "write_json_atomic",
    "write_results",
]
