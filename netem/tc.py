"""Pure builders of ``tc`` argv lists: nothing here runs a command, so all of it is tested without root.

A shaped link end gets, on its egress:

* rate only: ``tbf`` (or ``htb`` with one class where the kernel lacks ``tbf``);
* delay/jitter/loss with ``sch_netem``: ``netem`` at the root, the rate limiter as its child
  (the layout of the netem documentation);
* delay/jitter/loss without ``sch_netem``: only the rate limiter; the user-space delay line does the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from netem.errors import CapabilityError
from netem.spec import LinkSpec

Argv = list[str]

MTU_FRAME = 1514
"""Largest frame on our links (1500-byte IP packet + 14-byte Ethernet header on veth)."""
MIN_BURST_BYTES = 2 * 1600
"""tbf needs a bucket of at least one full frame; two leave room for timer granularity."""
BURST_SECONDS = 0.004
"""Bucket sized to 4 ms at the rate: big enough for the kernel's timer, small enough to keep bursts short."""
QUEUE_SECONDS = 0.1
"""Default queue: 100 ms at the rate, like a modest router buffer."""
MIN_LIMIT_BYTES = 16 * MTU_FRAME


def burst_bytes(rate_bps: int) -> int:
    """Token bucket size for ``rate_bps``: 4 ms worth of bytes, at least two frames."""
    return max(MIN_BURST_BYTES, math.ceil(rate_bps / 8 * BURST_SECONDS))


def limit_bytes(spec: LinkSpec) -> int:
    """The rate limiter's queue: the spec's limit, else 100 ms at the rate (at least 16 frames)."""
    if spec.limit_bytes is not None:
        return spec.limit_bytes
    if spec.rate_bps is None:
        raise ValueError("an unlimited link has no rate limiter queue")
    return max(MIN_LIMIT_BYTES, math.ceil(spec.rate_bps / 8 * QUEUE_SECONDS))


def _tc(netns: str | None) -> Argv:
    return ["tc", "-n", netns] if netns else ["tc"]


def _qdisc_add(netns: str | None, dev: str, parent: str, handle: str) -> Argv:
    """``tc [-n NS] qdisc add dev DEV root|parent P handle H``: the start of every qdisc we add."""
    where = ["root"] if parent == "root" else ["parent", parent]
    return [*_tc(netns), "qdisc", "add", "dev", dev, *where, "handle", handle]


def _us(seconds: float) -> str:
    return f"{round(seconds * 1e6)}us"


def tbf_argv(
    dev: str,
    rate_bps: int,
    *,
    burst: int | None = None,
    limit: int | None = None,
    netns: str | None = None,
    parent: str = "root",
    handle: str = "1:",
) -> Argv:
    """``tc qdisc add dev DEV root handle 1: tbf rate Rbit burst B limit L`` (sizes in bytes)."""
    b = burst if burst is not None else burst_bytes(rate_bps)
    lim = limit if limit is not None else max(MIN_LIMIT_BYTES, math.ceil(rate_bps / 8 * QUEUE_SECONDS))
    return [
        *_qdisc_add(netns, dev, parent, handle),
        "tbf",
        "rate",
        f"{rate_bps}bit",
        "burst",
        str(b),
        "limit",
        str(lim),
    ]


def htb_argvs(
    dev: str,
    rate_bps: int,
    *,
    burst: int | None = None,
    limit: int | None = None,
    netns: str | None = None,
    parent: str = "root",
    handle: str = "1:",
) -> list[Argv]:
    """htb with one default class at ``rate`` (ceil = rate) and a byte FIFO of ``limit`` under it."""
    b = burst if burst is not None else burst_bytes(rate_bps)
    lim = limit if limit is not None else max(MIN_LIMIT_BYTES, math.ceil(rate_bps / 8 * QUEUE_SECONDS))
    major = handle.rstrip(":")
    where = ["root"] if parent == "root" else ["parent", parent]
    tc = _tc(netns)
    return [
        [*tc, "qdisc", "add", "dev", dev, *where, "handle", f"{major}:", "htb", "default", "1"],
        [
            *tc,
            "class",
            "add",
            "dev",
            dev,
            "parent",
            f"{major}:",
            "classid",
            f"{major}:1",
            "htb",
            "rate",
            f"{rate_bps}bit",
            "ceil",
            f"{rate_bps}bit",
            "burst",
            str(b),
            "cburst",
            str(b),
        ],
        [
            *tc,
            "qdisc",
            "add",
            "dev",
            dev,
            "parent",
            f"{major}:1",
            "handle",
            f"{int(major) + 1}:",
            "bfifo",
            "limit",
            str(lim),
        ],
    ]


def netem_argv(
    dev: str,
    *,
    delay_s: float = 0.0,
    jitter_s: float = 0.0,
    loss: float = 0.0,
    limit_packets: int = 1000,
    netns: str | None = None,
    parent: str = "root",
    handle: str = "1:",
) -> Argv:
    """``tc qdisc add ... netem limit N delay D [J] loss P%`` (jitter needs a delay to attach to)."""
    argv = [
        *_qdisc_add(netns, dev, parent, handle),
        "netem",
        "limit",
        str(limit_packets),
    ]
    if delay_s > 0 or jitter_s > 0:
        argv += ["delay", _us(delay_s)]
        if jitter_s > 0:
            argv.append(_us(jitter_s))
    if loss > 0:
        argv += ["loss", f"{loss * 100:.6g}%"]
    return argv


def qdisc_del_argv(dev: str, *, netns: str | None = None) -> Argv:
    """Remove whatever root qdisc ``dev`` has (and everything under it)."""
    return [*_tc(netns), "qdisc", "del", "dev", dev, "root"]


def netem_limit_packets(spec: LinkSpec) -> int:
    """netem's queue holds every packet in flight on the delay: 2× the bandwidth-delay product, ≥ 1000."""
    if spec.rate_bps is None:
        return 10_000
    in_flight = spec.rate_bps / 8 * (spec.delay_s + spec.jitter_s) / 1500
    return max(1000, math.ceil(2 * in_flight))


@dataclass(frozen=True)
class ShapingPlan:
    """The commands for one link end, which mechanism applies each parameter, and what is left over."""

    commands: list[Argv]
    applied: dict[str, str]
    userspace: tuple[str, ...] = field(default=())  # parameters the delay line must apply


def plan_link_end(
    dev: str, spec: LinkSpec, qdiscs: frozenset[str], *, netns: str | None = None
) -> ShapingPlan:
    """Choose qdiscs for the egress of ``dev`` from what the kernel has.

    Raises ``CapabilityError`` if the rate cannot be shaped (neither ``tbf`` nor ``htb``). Delay, jitter
    and loss that the kernel cannot apply are returned in ``userspace`` for the caller to hand to the
    delay line, never dropped.
    """
    commands: list[Argv] = []
    applied: dict[str, str] = {}
    wanted = [
        p
        for p, on in (("delay", spec.delay_s > 0), ("jitter", spec.jitter_s > 0), ("loss", spec.loss > 0))
        if on
    ]
    use_netem = bool(wanted) and "netem" in qdiscs
    rate_parent, rate_handle = "root", "1:"
    if use_netem:
        commands.append(
            netem_argv(
                dev,
                delay_s=spec.delay_s,
                jitter_s=spec.jitter_s,
                loss=spec.loss,
                limit_packets=netem_limit_packets(spec),
                netns=netns,
            )
        )
        applied.update({p: "netem" for p in wanted})
        rate_parent, rate_handle = "1:1", "10:"
    if spec.rate_bps is not None:
        lim = limit_bytes(spec)
        if "tbf" in qdiscs:
            commands.append(
                tbf_argv(dev, spec.rate_bps, limit=lim, netns=netns, parent=rate_parent, handle=rate_handle)
            )
            applied["rate"] = "tbf"
        elif "htb" in qdiscs:
            commands.extend(
                htb_argvs(dev, spec.rate_bps, limit=lim, netns=netns, parent=rate_parent, handle=rate_handle)
            )
            applied["rate"] = "htb"
        else:
            raise CapabilityError(
                "cannot shape the rate: the kernel has neither the tbf nor the htb qdisc "
                "(modprobe sch_tbf or sch_htb, or leave the rate out)"
            )
    return ShapingPlan(commands, applied, () if use_netem else tuple(wanted))
