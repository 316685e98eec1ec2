"""The experiment configuration: plain frozen data, validated on construction, separate from the runtime.

A ``RunConfig`` says *what* to measure (model, exit, threshold, data, link, edge limits, repeats); the
runner decides *how*. Values are validated in ``__post_init__`` with ``ValueError``; the CLI turns those
into ``ConfigError`` so the user sees one clear line. Link strings are kept in tc's notation (``10mbit``,
``20ms``, ``0.5%``) and parsed by ``netem.LinkSpec.parse`` when the testbed is built.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.names import DEFAULT_DATASET, ISOLATIONS
from contract.rules import check_model_exit, check_threshold
from models.options import check_device_name, check_spec
from netem.spec import CONGESTION_CONTROL_RE, parse_cpuset
from nodes.policy import check_policy

from .busy import DEFAULT_BUSY_RETRIES, DEFAULT_MAX_OTHER_CPU
from .errors import ConfigError
from .placement import PLACEMENTS

DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
#: In netns mode every node has its own address, so fixed ports never collide with the host's programs.
NETNS_PORTS = (7001, 7002)  # (cloud, edge)


@dataclass(frozen=True)
class LinkOptions:
    """One link's shaping request in tc notation; ``None`` means "not requested"."""

    rate: str | None = None
    delay: str | None = None
    jitter: str | None = None
    loss: str | None = None

    def __post_init__(self) -> None:
        for name in ("rate", "delay", "jitter", "loss"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"link {name} must be a non-empty string like tc's, got {value!r}")

    def requested(self) -> dict[str, str]:
        """The parameters the user asked for, by name (``rate``, ``delay``, ``jitter``, ``loss``)."""
        return {
            name: value
            for name in ("rate", "delay", "jitter", "loss")
            if (value := getattr(self, name)) is not None
        }

    def label(self) -> str:
        """Short name for file names and tables, e.g. ``10mbit-20ms`` or ``unshaped``."""
        parts = [v for v in (self.rate, self.delay, self.jitter, self.loss) if v is not None]
        return "-".join(parts) if parts else "unshaped"


@dataclass(frozen=True)
class RunConfig:
    """Everything one ``python -m harness`` invocation measures. Defaults are the README experiment."""

    model: str = "mem"
    exit: int | None = 5
    threshold: float = 0.3
    batch_size: int = 32
    samples: int | None = None  # None: the whole test split
    warmup_batches: int = 2
    inflight: int = 1
    repeat: int = 1
    dataset: str = DEFAULT_DATASET
    data_dir: Path | None = None
    checkpoint: Path | None = None  # None: the shipped zoo checkpoint for (model, exit)
    edge_cloud: LinkOptions = field(default_factory=LinkOptions)
    test_edge: LinkOptions | None = None
    edge_cpus: str | None = None
    edge_cpuset: str | None = None
    edge_mem: str | None = None
    cloud_cpuset: str | None = None  # the CPUs the cloud node runs on (affinity); None: any
    placement: str = "auto"  # the nodes' CPU sets: harness.placement
    max_other_cpu: float = DEFAULT_MAX_OTHER_CPU  # other programs' CPU % above which a run is re-run
    busy_retries: int = DEFAULT_BUSY_RETRIES  # re-runs of a run measured on a busy host
    tcp_cc: str | None = None  # TCP congestion control of the nodes' connections; None: the kernel's
    link_schedule: str | None = None  # --link-schedule: inline steps or a TOML file (netem.schedule)
    cpu_schedule: str | None = None  # --cpu-schedule: the edge's CPU quota over time, inline
    exit_policy: str = "fixed"  # --exit-policy: how the edge picks each batch's exit (nodes.policy)
    latency_slo_ms: float | None = None  # --latency-slo: the adaptive/oracle policy's latency objective
    profile: Path | None = None  # --profile: per-exit costs (harness profile); None: measured at start
    #: --calibration: each exit's threshold (and temperature) from `harness calibrate`'s file; the run's
    #: ``threshold`` is then the file's at ``exit`` (harness.runner.prepare sets it)
    calibration: Path | None = None
    seed: int = 0
    isolation: str = "auto"
    allow_unshaped: bool = False
    ports: tuple[int, int] | None = None  # (cloud, edge); None: fixed in netns, free ones on loopback
    ready_timeout_s: float = 60.0
    run_timeout_s: float = 3600.0
    calibrate: bool = True
    strict_clocks: bool = False  # fail a run whose clock corrections exceed nodes.timing's bound
    model_spec: str | None = None  # --model-spec: the factory of --checkpoint's model (models.protocol)
    edge_device: str = "cpu"  # --edge-device: where the edge runs its part (cpu, cuda, cuda:N)
    cloud_device: str = "cpu"  # --cloud-device: where the cloud runs its part

    def __post_init__(self) -> None:
        # (where a run's model, exit and threshold enter the harness: its command line, a sweep's grid, a
        # request read back from a results file)
        try:
            check_model_exit(self.model, self.exit)
        except ValueError as exc:
            raise ValueError(f"--model/--exit: {exc}") from None
        try:
            check_threshold(self.threshold)
        except ValueError as exc:
            raise ValueError(f"--threshold: {exc}") from None
        _positive("--batch-size", self.batch_size)
        _positive("--inflight", self.inflight)
        _positive("--repeat", self.repeat)
        if self.samples is not None:
            _positive("--samples", self.samples)
        if self.warmup_batches < 0:
            raise ValueError(f"--warmup-batches must be 0 or more, got {self.warmup_batches}")
        if self.isolation not in ISOLATIONS:
            raise ValueError(f"--isolation must be one of {', '.join(ISOLATIONS)}, not {self.isolation!r}")
        if self.ports is not None:
            if len(self.ports) != 2 or len(set(self.ports)) != 2:
                raise ValueError(f"--ports needs two different ports CLOUD,EDGE, got {self.ports}")
            for port in self.ports:
                if not 1 <= port <= 65535:
                    raise ValueError(f"port {port} is out of range 1..65535")
        if self.tcp_cc is not None and not CONGESTION_CONTROL_RE.fullmatch(self.tcp_cc):
            raise ValueError(
                f"--tcp-cc takes a congestion control's name as the kernel lists it (cubic, bbr, reno, ...), "
                f"not {self.tcp_cc!r}"
            )
        if self.placement not in PLACEMENTS:
            raise ValueError(f"--placement must be one of {', '.join(PLACEMENTS)}, not {self.placement!r}")
        if not (isinstance(self.max_other_cpu, (int, float)) and self.max_other_cpu >= 0):
            raise ValueError(f"--max-other-cpu is a CPU % ≥ 0 (100 = one core), got {self.max_other_cpu!r}")
        if not isinstance(self.busy_retries, int) or self.busy_retries < 0:
            raise ValueError(f"--busy-retries must be 0 or more, got {self.busy_retries!r}")
        if self.ready_timeout_s <= 0 or self.run_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        self._check_schedules()
        self._check_model_options()
        self._check_policy()

    def _check_policy(self) -> None:
        try:
            check_policy(self.exit_policy, self.model, self.latency_slo_ms)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        if self.calibration is not None and self.model == "standard":
            raise ValueError("--calibration gives local exits their thresholds: the standard model has none")
        if self.exit_policy == "fixed" and self.profile is not None:
            raise ValueError("--profile applies to the adaptive and oracle exit policies")
        if self.exit_policy == "oracle" and self.link_schedule is None:
            raise ValueError("--exit-policy oracle knows the link from --link-schedule: give one")

    def _check_model_options(self) -> None:
        """A user's model comes with its weights; devices are spelt as torch spells them (whether this
        machine has them is checked when the run is prepared)."""
        if self.model_spec is not None:
            try:
                check_spec(self.model_spec)
            except ValueError as exc:
                raise ValueError(f"--model-spec: {exc}") from None
            if self.checkpoint is None:
                raise ValueError("--model-spec needs --checkpoint: the weights of the model it builds")
        for option, value in (("--edge-device", self.edge_device), ("--cloud-device", self.cloud_device)):
            try:
                check_device_name(value)
            except ValueError as exc:
                raise ValueError(f"{option}: {exc}") from None

    def _check_schedules(self) -> None:
        """A schedule's first step is the start: the options that would set the same thing are refused."""
        for option, value in (("--link-schedule", self.link_schedule), ("--cpu-schedule", self.cpu_schedule)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"{option} needs steps like '0s:10mbit/5ms,20s:1mbit/40ms' or a file")
        if self.link_schedule is not None and self.edge_cloud.requested():
            given = ", ".join(f"--{'bw' if k == 'rate' else k}" for k in self.edge_cloud.requested())
            raise ValueError(
                f"--link-schedule sets the edge–cloud link from its first step on: leave out {given}"
            )
        if self.cpu_schedule is not None and self.edge_cpus is not None:
            raise ValueError(
                "--cpu-schedule sets the edge's CPU quota from its first step on: leave out --edge-cpus"
            )

    @property
    def name(self) -> str:
        """The model's name as the paper writes it: ``standard``, ``sem-3``, ``mem`` (at exit k)."""
        if self.model == "sem":
            return f"sem-{self.exit}"
        return self.model

    def label(self) -> str:
        """A file-name-safe label of this point: ``mem-e5-t0.3-10mbit``."""
        exit_part = f"-e{self.exit}" if self.exit is not None else ""
        link = "scheduled" if self.link_schedule is not None else self.edge_cloud.label()
        policy = f"-{self.exit_policy}" if self.exit_policy != "fixed" else ""
        cut = "calibrated" if self.calibration is not None else f"t{self.threshold:g}"
        raw = f"{self.model}{exit_part}{policy}-{cut}-{link}"
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in raw)

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes`` applied (and validated again)."""
        return dataclasses.replace(self, **changes)


def check_edge_cpus(cfg: RunConfig, usable: int | None = None) -> None:
    """Refuse (``ConfigError``) an edge CPU quota above the CPUs there are to give it.

    The quota sets the edge's torch thread count, so ``--edge-cpus 99`` on two CPUs would run 99
    threads fighting over two CPUs and measure that contention, not the model. ``usable`` is the number
    of CPUs this process may run on (default: its affinity mask, which a container or ``taskset``
    narrows). This is checked before a run and not in ``RunConfig`` itself, because a configuration
    recorded on a bigger machine must still load here (``check``, ``reports``). A quota that is not a
    number is left to ``netem.EdgeLimits.parse``, which says what it should look like.
    """
    if cfg.edge_cpus is None:
        return
    try:
        cpus = float(cfg.edge_cpus)
    except ValueError:
        return
    have = len(os.sched_getaffinity(0)) if usable is None else usable
    if cpus > have:
        raise ConfigError(
            f"--edge-cpus {cfg.edge_cpus} is more CPUs than this machine gives us ({have}): "
            f"use at most {have}"
        )
    if cfg.edge_cpuset is not None:
        try:
            in_set = len(parse_cpuset(cfg.edge_cpuset))
        except ValueError:
            return
        if cpus > in_set:
            raise ConfigError(
                f"--edge-cpus {cfg.edge_cpus} is more CPUs than --edge-cpuset {cfg.edge_cpuset} holds "
                f"({in_set}): use at most {in_set}, or a larger CPU set"
            )


def _positive(option: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{option} must be a positive integer, got {value!r}")


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The request as plain JSON data (stored in the results file so ``check`` can run it again)."""
    data = dataclasses.asdict(cfg)
    for key in ("data_dir", "checkpoint", "profile", "calibration"):
        if data[key] is not None:
            data[key] = str(data[key])
    if data["ports"] is not None:
        data["ports"] = list(data["ports"])
    return data


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Inverse of :func:`config_to_dict`; raises ``ValueError`` on unknown or invalid fields."""
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown run options {', '.join(sorted(unknown))}")
    values = dict(data)
    for key in ("data_dir", "checkpoint", "profile", "calibration"):
        if values.get(key) is not None:
            values[key] = Path(values[key])
    if values.get("ports") is not None:
        values["ports"] = tuple(values["ports"])
    if isinstance(values.get("edge_cloud"), dict):
        values["edge_cloud"] = LinkOptions(**values["edge_cloud"])
    if isinstance(values.get("test_edge"), dict):
        values["test_edge"] = LinkOptions(**values["test_edge"])
    try:
        return RunConfig(**values)
    except TypeError as exc:
        raise ValueError(str(exc)) from exc
