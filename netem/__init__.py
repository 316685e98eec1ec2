"""netem: the testbed the nodes run in: namespaces, shaped links, the edge's CPU and memory limits.

See ``docs/netem.md``. Everything the harness uses is importable from here.
"""

from netem.cgroups import CgroupPlan, EdgeCgroup, plan_cgroup
from netem.cleanup import clean, find_leftovers
from netem.docker import DockerTestbed
from netem.errors import CapabilityError, CommandError, HelperExited, NetemError, SpecError
from netem.executor import CommandResult, Executor
from netem.mahimahi import read_mahimahi
from netem.probe import Capabilities, probe_capabilities
from netem.schedule import AppliedChange, CpuStep, LinkSchedule, LinkStep, mahimahi_to_rate_steps
from netem.scheduler import LinkScheduler, ScheduleFailed
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

__all__ = [
    "AppliedChange",
    "Capabilities",
    "CapabilityError",
    "CgroupPlan",
    "CommandError",
    "CommandResult",
    "CpuStep",
    "DockerTestbed",
    "EdgeCgroup",
    "EdgeLimits",
    "Executor",
    "HelperExited",
    "LinkSchedule",
    "LinkScheduler",
    "LinkSpec",
    "LinkStep",
    "NetemError",
    "ScheduleFailed",
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
