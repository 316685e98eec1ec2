"""Pure builders of ``tc`` argv lists: nothing here runs a command, so all of it is tested without root.

A shaped link end gets, on its egress:

* rate only: ``tbf`` (or ``htb`` with one class where the kernel lacks ``tbf``);
* delay/jitter/loss with ``sch_netem``: ``netem`` at the root, the rate limiter as its child
  (the layout of the netem documentation);
* delay/jitter/loss without ``sch_netem``: only the rate limiter; the user-space delay line does the rest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from netem.errors import CapabilityError, SpecError
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
RATE_UNDER_NETEM = ("1:1", "10:")
"""(parent, handle) of the rate limiter when netem sits at the root above it."""


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
    dev: str,
    spec: LinkSpec,
    qdiscs: frozenset[str],
    *,
    netns: str | None = None,
    delay_stage: bool = False,
) -> ShapingPlan:
    """Choose qdiscs for the egress of ``dev`` from what the kernel has.

    Raises ``CapabilityError`` if the rate cannot be shaped (neither ``tbf`` nor ``htb``). Delay, jitter
    and loss that the kernel cannot apply are returned in ``userspace`` for the caller to hand to the
    delay line, never dropped. ``delay_stage``: have a delay stage (netem, or the delay line) for all
    three even where ``spec`` sets none of them, so that a schedule can set them on the live link later
    (:func:`plan_link_change`); it starts at no delay and no loss.
    """
    commands: list[Argv] = []
    applied: dict[str, str] = {}
    stage = (("delay", spec.delay_s > 0), ("jitter", spec.jitter_s > 0), ("loss", spec.loss > 0))
    wanted = [p for p, on in stage if on or delay_stage]
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
        rate_parent, rate_handle = RATE_UNDER_NETEM
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


# --- changing a live link ------------------------------------------------------------------------------
# A schedule changes a link that is up: ``tc ... change`` keeps the qdisc and its queued packets and
# swaps the parameters, so a change does not flush what is in flight (``del`` + ``add`` would).


def _as_change(argv: Argv, netns: str | None) -> Argv:
    """The same command with ``add`` turned into ``change``: one definition of each qdisc's parameters."""
    verb = len(_tc(netns)) + 1  # tc [-n NS] qdisc|class VERB
    if argv[verb] != "add":
        raise ValueError(f"not an add command: {argv}")
    return [*argv[:verb], "change", *argv[verb + 1 :]]


def tbf_change_argv(
    dev: str,
    rate_bps: int,
    *,
    burst: int | None = None,
    limit: int | None = None,
    netns: str | None = None,
    parent: str = "root",
    handle: str = "1:",
) -> Argv:
    """``tc qdisc change ... tbf rate R burst B limit L``: new rate, bucket and queue on a live tbf."""
    add = tbf_argv(dev, rate_bps, burst=burst, limit=limit, netns=netns, parent=parent, handle=handle)
    return _as_change(add, netns)


def htb_change_argvs(
    dev: str,
    rate_bps: int,
    *,
    burst: int | None = None,
    limit: int | None = None,
    netns: str | None = None,
    parent: str = "root",
    handle: str = "1:",
) -> list[Argv]:
    """``tc class change`` of the htb class's rate and ``tc qdisc change`` of the FIFO's limit under it.

    The htb qdisc itself holds nothing that depends on the rate, so it is left alone.
    """
    adds = htb_argvs(dev, rate_bps, burst=burst, limit=limit, netns=netns, parent=parent, handle=handle)
    return [_as_change(argv, netns) for argv in adds[1:]]


def netem_change_argv(
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
    """``tc qdisc change ... netem ...``. netem resets every parameter a change leaves out, so a change to
    no delay and no loss is still a valid command (``netem limit N``) that clears both."""
    add = netem_argv(
        dev,
        delay_s=delay_s,
        jitter_s=jitter_s,
        loss=loss,
        limit_packets=limit_packets,
        netns=netns,
        parent=parent,
        handle=handle,
    )
    return _as_change(add, netns)


def plan_link_change(
    dev: str, spec: LinkSpec, applied: Mapping[str, str], *, netns: str | None = None
) -> ShapingPlan:
    """Commands that turn a live link end into ``spec``, given what its bring-up applied.

    ``applied`` is the bring-up's parameter → mechanism map (a :class:`ShapingPlan`'s ``applied``, or
    the testbed's, which adds ``tun-delay-line``): it tells which qdiscs exist, in the layout
    :func:`plan_link_end` builds. The commands are those :func:`plan_link_end` would give for ``spec``,
    with ``change`` for ``add``. Delay, jitter and loss on a link whose delay stage is the user-space delay
    line come back in ``userspace`` for the caller to hand to it.

    Raises :class:`SpecError` for what the live layout cannot do: add or remove the rate limiter, or set
    delay, jitter or loss on a link brought up with no delay stage (bring it up with the schedule's
    layout: a rate from the first step if any step has one, a delay stage if any step needs one).
    """
    mechanisms = set(applied.values())
    has_netem = "netem" in mechanisms
    has_delay_line = "tun-delay-line" in mechanisms
    rate_mechanism = applied.get("rate")
    if spec.rate_bps is not None and rate_mechanism is None:
        raise SpecError(
            f"{dev}: the link was brought up without a rate limiter, so its rate cannot be changed to "
            f"{spec.describe()['rate']}; give the schedule's first step a rate"
        )
    if spec.rate_bps is None and rate_mechanism is not None:
        raise SpecError(
            f"{dev}: a live link's rate limiter ({rate_mechanism}) cannot be removed; give a rate"
        )
    if spec.needs_delay_line and not (has_netem or has_delay_line):
        raise SpecError(
            f"{dev}: the link was brought up without a delay stage (netem or the delay line), so delay, "
            "jitter and loss cannot be set now; bring it up with a delay stage"
        )
    commands: list[Argv] = []
    kernel: dict[str, str] = {}
    stage = ("delay", "jitter", "loss")
    if has_netem:
        commands.append(
            netem_change_argv(
                dev,
                delay_s=spec.delay_s,
                jitter_s=spec.jitter_s,
                loss=spec.loss,
                limit_packets=netem_limit_packets(spec),
                netns=netns,
            )
        )
        kernel.update(dict.fromkeys(stage, "netem"))
    if spec.rate_bps is not None:
        parent, handle = RATE_UNDER_NETEM if has_netem else ("root", "1:")
        lim = limit_bytes(spec)
        if rate_mechanism == "tbf":
            commands.append(
                tbf_change_argv(dev, spec.rate_bps, limit=lim, netns=netns, parent=parent, handle=handle)
            )
        elif rate_mechanism == "htb":
            commands.extend(
                htb_change_argvs(dev, spec.rate_bps, limit=lim, netns=netns, parent=parent, handle=handle)
            )
        else:
            raise ValueError(f"{dev}: unknown rate mechanism {rate_mechanism!r} in {dict(applied)}")
        kernel["rate"] = rate_mechanism
    return ShapingPlan(commands, kernel, () if has_netem or not has_delay_line else stage)
