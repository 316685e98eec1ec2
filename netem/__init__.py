"""netem: the testbed the nodes run in: namespaces, shaped links, the edge's CPU and memory limits.

See ``docs/netem.md``. Everything the harness uses is importable from here. Names resolve lazily, so
that the testbed's child programs (``python -m netem.run_delayline``, ``netem.measure``) start in tens
of milliseconds instead of importing the error root's package (``models``, which loads torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from netem.cgroups import CgroupPlan, EdgeCgroup, plan_cgroup
    from netem.cleanup import clean, find_leftovers
    from netem.errors import CapabilityError, CommandError, HelperExited, NetemError, SpecError
    from netem.executor import CommandResult, Executor
    from netem.mahimahi import read_mahimahi
    from netem.probe import Capabilities, probe_capabilities
    from netem.schedule import AppliedChange, CpuStep, LinkSchedule, LinkStep, mahimahi_to_rate_steps
    from netem.spec import EdgeLimits, LinkSpec, TestbedConfig, format_cpuset, parse_cpuset
    from netem.tc import (
        ShapingPlan,
        burst_bytes,
        htb_argvs,
        htb_change_argvs,
        netem_argv,
        netem_change_argv,
        plan_link_change,
        plan_link_end,
        qdisc_del_argv,
        tbf_argv,
        tbf_change_argv,
    )
    from netem.testbed import Testbed, make_testbed

_EXPORTS = {
    "CgroupPlan": "netem.cgroups", "EdgeCgroup": "netem.cgroups", "plan_cgroup": "netem.cgroups",
    "clean": "netem.cleanup", "find_leftovers": "netem.cleanup",
    "CapabilityError": "netem.errors", "CommandError": "netem.errors", "NetemError": "netem.errors",
    "SpecError": "netem.errors", "HelperExited": "netem.errors",
    "CommandResult": "netem.executor", "Executor": "netem.executor",
    "Capabilities": "netem.probe", "probe_capabilities": "netem.probe",
    "read_mahimahi": "netem.mahimahi",
    "AppliedChange": "netem.schedule", "CpuStep": "netem.schedule", "LinkSchedule": "netem.schedule",
    "LinkStep": "netem.schedule", "mahimahi_to_rate_steps": "netem.schedule",
    "htb_change_argvs": "netem.tc", "netem_change_argv": "netem.tc", "plan_link_change": "netem.tc",
    "tbf_change_argv": "netem.tc",
    "EdgeLimits": "netem.spec", "LinkSpec": "netem.spec", "TestbedConfig": "netem.spec",
    "format_cpuset": "netem.spec", "parse_cpuset": "netem.spec",
    "ShapingPlan": "netem.tc", "burst_bytes": "netem.tc", "htb_argvs": "netem.tc", "netem_argv": "netem.tc",
    "plan_link_end": "netem.tc", "qdisc_del_argv": "netem.tc", "tbf_argv": "netem.tc",
    "Testbed": "netem.testbed", "make_testbed": "netem.testbed",
}  # fmt: skip

__all__ = [
    "AppliedChange",
    "Capabilities",
    "CapabilityError",
    "CgroupPlan",
    "CommandError",
    "CommandResult",
    "CpuStep",
    "EdgeCgroup",
    "EdgeLimits",
    "Executor",
    "HelperExited",
    "LinkSchedule",
    "LinkSpec",
    "LinkStep",
    "NetemError",
    "ShapingPlan",
    "SpecError",
    "Testbed",
    "TestbedConfig",
    "burst_bytes",
    "clean",
    "find_leftovers",
    "format_cpuset",
    "htb_argvs",
    "htb_change_argvs",
    "mahimahi_to_rate_steps",
    "make_testbed",
    "netem_argv",
    "netem_change_argv",
    "parse_cpuset",
    "plan_cgroup",
    "plan_link_change",
    "plan_link_end",
    "probe_capabilities",
    "qdisc_del_argv",
    "read_mahimahi",
    "tbf_argv",
    "tbf_change_argv",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'netem' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
