"""Clock offsets across nodes: every procedure that subtracts two nodes' stamps is corrected by the
measured offset (with its uncertainty and drift), a shared clock is used as it is, and a run whose
corrections are not good enough for its procedures says so -- or fails with ``--strict-clocks``."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import nodes.cloud
from models import synthetic_dataset
from nodes.cloud import CloudConfig, CloudNode
from nodes.compute import load_parts
from nodes.edge import EdgeConfig, EdgeNode
from nodes.test import ClientConfig, amain, build_parser, run_test_client
from nodes.timing import (
    NS_PER_MS,
    NS_PER_S,
    OFFSET_CORRECTED,
    SHARED_CLOCK,
    BatchStamps,
    ClockError,
    ClockEstimate,
    NodeClock,
    check_clocks,
    clock_domain,
    clock_offset,
    correct_stamps,
    node_clock,
    procedures_ms,
)
from tests.programs import host_port, spawn, wait_ready

SHIFT_NS = 5000 * NS_PER_S  # the offset of the reproduction (unshare -T --monotonic 5000)
EXIT = 2

# -- synthetic clocks ----------------------------------------------------------------------------------

Clock = Callable[[int], int]  # the node's clock reading at a given instant of the test node's clock


def _shifted(offset_ns: int, ppm: float = 0.0, since: int = 0) -> Clock:
    """A clock ``offset_ns`` ahead of the test node's, gaining ``ppm`` parts per million from ``since``."""
    return lambda t: t + offset_ns + int((t - since) * ppm / 1e6)


def _probe(node: Clock, at: int, one_way_ns: tuple[tuple[int, int], ...]) -> ClockEstimate:
    """What the test node estimates from probes sent from ``at`` on with these (out, back) delays (the
    node turns each probe around in 5 µs)."""
    samples = []
    t = at
    for out, back in one_way_ns:
        t1 = t + out
        t2 = t1 + 5_000
        samples.append((t, node(t1), node(t2), t2 + back))
        t = t2 + back + 1_000_000
    return clock_offset(samples)


SYMMETRIC = ((30_000, 30_000), (90_000, 20_000), (25_000, 25_000))  # best: 50 µs round trip


def _true_batch(t_send: int) -> dict[str, int]:
    """One batch's instants on the test node's clock (1: 1 ms, 2: 2 ms, 3-1: 0.4 ms, 3-2: 0.6 ms,
    4: 2 ms, 5: 0.45 ms)."""
    edge_recv = t_send + 1_000_000
    edge_done = edge_recv + 2_000_000
    cloud_recv = edge_done + 600_000
    cloud_done = cloud_recv + 2_000_000
    return {
        "t_send": t_send,
        "t_edge_recv": edge_recv,
        "t_edge_done": edge_done,
        "t_edge_reply": edge_done + 400_000,
        "t_cloud_recv": cloud_recv,
        "t_cloud_done": cloud_done,
        "t_cloud_reply": cloud_done + 450_000,
    }


def _as_stamped(true: dict[str, int], edge: Clock, cloud: Clock) -> BatchStamps:
    """The batch as the three nodes stamp it, each on its own clock."""
    return BatchStamps(
        t_send=true["t_send"],
        t_edge_recv=edge(true["t_edge_recv"]),
        t_edge_done=edge(true["t_edge_done"]),
        t_edge_reply=true["t_edge_reply"],
        local=3,
        cloud=5,
        t_cloud_recv=cloud(true["t_cloud_recv"]),
        t_cloud_done=cloud(true["t_cloud_done"]),
        t_cloud_reply=true["t_cloud_reply"],
    )


def _true_procedures(true: dict[str, int]) -> dict[str, float]:
    return procedures_ms(BatchStamps(**true, local=3, cloud=5))


@pytest.mark.parametrize("edge_offset_ns", [0, -7 * NS_PER_S], ids=["edge-on-test-clock", "edge-7s-behind"])
def test_a_5000_s_offset_is_corrected_out_of_every_procedure_that_crosses_nodes(edge_offset_ns: int) -> None:
    start = 1_000 * NS_PER_S
    edge, cloud = _shifted(edge_offset_ns), _shifted(SHIFT_NS)
    clocks = {
        name: node_clock(
            _probe(c, start, SYMMETRIC),
            _probe(c, start + 10 * NS_PER_S, SYMMETRIC),
            peer_domain=None,
            local_domain="here",
        )
        for name, c in (("edge", edge), ("cloud", cloud))
    }
    assert clocks["cloud"].method == OFFSET_CORRECTED
    assert abs(clocks["cloud"].offset_ns - SHIFT_NS) <= clocks["cloud"].uncertainty_ns == 25_000

    true = _true_batch(start + 5 * NS_PER_S)
    raw = procedures_ms(_as_stamped(true, edge, cloud))
    assert raw["3-2"] > 4_000_000 and raw["5"] < -4_000_000, "uncorrected, the offset swamps the procedures"
    got = procedures_ms(correct_stamps(_as_stamped(true, edge, cloud), clocks["edge"], clocks["cloud"]))
    want = _true_procedures(true)
    u = {n: c.uncertainty_ns / NS_PER_MS for n, c in clocks.items()}
    for proc, nodes_ in {"1": ("edge",), "3-1": ("edge",), "3-2": ("edge", "cloud"), "5": ("cloud",)}.items():
        assert got[proc] == pytest.approx(want[proc], abs=sum(u[n] for n in nodes_)), proc
    assert got["2"] == want["2"] and got["4"] == want["4"], "a node's own intervals need no correction"


def test_a_drifting_clock_is_interpolated_between_the_probes_before_and_after() -> None:
    start, span = 1_000 * NS_PER_S, 10 * NS_PER_S
    cloud = _shifted(SHIFT_NS, ppm=50, since=start)  # 50 µs/s: 0.5 ms over the run
    clk = node_clock(
        _probe(cloud, start, SYMMETRIC),
        _probe(cloud, start + span, SYMMETRIC),
        peer_domain=None,
        local_domain="here",
    )
    assert clk.drift_ns_per_s == pytest.approx(50_000, abs=(2 * clk.uncertainty_ns) / 10)
    shared = NodeClock(SHARED_CLOCK, clk.before, clk.before)
    true = _true_batch(start + span // 2)
    got = procedures_ms(correct_stamps(_as_stamped(true, lambda t: t, cloud), shared, clk))
    before_only = NodeClock(OFFSET_CORRECTED, clk.before, clk.before)
    stale = procedures_ms(correct_stamps(_as_stamped(true, lambda t: t, cloud), shared, before_only))
    want = _true_procedures(true)
    u = clk.uncertainty_ns / NS_PER_MS
    assert got["5"] == pytest.approx(want["5"], abs=u) and got["3-2"] == pytest.approx(want["3-2"], abs=u)
    assert abs(stale["5"] - want["5"]) > 5 * u, "the offset before the run alone misses the drift"


def _run_of(edge: NodeClock, cloud: NodeClock, at: int, batches: int = 10) -> list[BatchStamps]:
    ec = lambda t: t + edge.offset_at(t)  # noqa: E731 -- (the node clocks these estimates describe)
    cc = lambda t: t + cloud.offset_at(t)  # noqa: E731
    return [
        correct_stamps(_as_stamped(_true_batch(at + i * 10_000_000), ec, cc), edge, cloud)
        for i in range(batches)
    ]


def test_uncertainty_beyond_a_tenth_of_a_procedure_is_flagged_and_adds_up_across_two_nodes() -> None:
    start = 1_000 * NS_PER_S
    slow = ((300_000, 300_000),)  # 0.6 ms round trip: ± 0.3 ms
    fast = ((20_000, 20_000),)  # ± 0.02 ms
    edge_shift, cloud_shift = _shifted(-3 * NS_PER_S), _shifted(SHIFT_NS)

    def clock(c: Clock, probes: tuple[tuple[int, int], ...]) -> NodeClock:
        return node_clock(
            _probe(c, start, probes),
            _probe(c, start + NS_PER_S, probes),
            peer_domain="there",
            local_domain="here",
        )

    good = {"edge": clock(edge_shift, fast), "cloud": clock(cloud_shift, fast)}
    assert check_clocks(_run_of(good["edge"], good["cloud"], start + 1000), good).trusted

    # the cloud's uncertainty exceeds a tenth of procedure 5 (0.45 ms) and of 3-2 (0.6 ms, with the edge's)
    # but not of procedure 1 or 3-1, which only the edge's clock enters
    bad = {"edge": good["edge"], "cloud": clock(cloud_shift, slow)}
    check = check_clocks(_run_of(bad["edge"], bad["cloud"], start + 1000), bad)
    assert not check.trusted
    flagged = sorted(w.split()[1] for w in check.warnings)
    assert flagged == ["3-2", "5"], check.warnings
    assert check.procedures["3-2"]["uncertainty_ms"] == pytest.approx(0.3 + 0.02, abs=0.002)
    assert check.to_json()["trusted"] is False and "± 0.320 ms" in " ".join(check.warnings)


def test_drift_beyond_a_tenth_of_a_procedure_is_flagged() -> None:
    start = 1_000 * NS_PER_S
    cloud = _shifted(SHIFT_NS, ppm=50, since=start)  # 0.5 ms over 10 s: more than 0.045 ms (10 % of 5)
    clk = node_clock(
        _probe(cloud, start, SYMMETRIC),
        _probe(cloud, start + 10 * NS_PER_S, SYMMETRIC),
        peer_domain=None,
        local_domain="h",
    )
    edge = NodeClock(SHARED_CLOCK, clk.before, clk.after)
    check = check_clocks(_run_of(edge, clk, start + 1000), {"edge": edge, "cloud": clk})
    drifted = [w for w in check.warnings if "moved by" in w]
    assert sorted(w.split()[1] for w in drifted) == ["3-2", "5"], check.warnings
    steady = node_clock(
        _probe(_shifted(SHIFT_NS), start, SYMMETRIC),
        _probe(_shifted(SHIFT_NS), start + 10 * NS_PER_S, SYMMETRIC),
        peer_domain=None,
        local_domain="h",
    )
    assert check_clocks(_run_of(edge, steady, start + 1000), {"edge": edge, "cloud": steady}).trusted


def test_a_node_on_the_test_nodes_clock_is_used_as_it_is_and_recorded_so() -> None:
    here = clock_domain()
    assert here is not None, "Linux names its clock"
    est = _probe(_shifted(40_000), 0, SYMMETRIC)  # a probe's own error on one host
    shared = node_clock(est, est, peer_domain=here, local_domain=here)
    assert shared.method == SHARED_CLOCK and shared.offset_at(123) == 0 and shared.uncertainty_ns == 0
    stamps = _as_stamped(_true_batch(10**9), lambda t: t, lambda t: t)
    assert correct_stamps(stamps, shared, shared) == stamps
    assert (
        shared.to_json()["method"] == "shared-clock"
        and shared.to_json()["before"]["offset_ns"] == est.offset_ns
    )
    # a node that does not say which clock it has (an older node) is corrected, never assumed shared
    assert node_clock(est, est, peer_domain=None, local_domain=here).method == OFFSET_CORRECTED
    assert node_clock(est, est, peer_domain=None, local_domain=None).method == OFFSET_CORRECTED


def test_another_process_on_this_host_names_the_same_clock() -> None:
    code = "from nodes.timing import clock_domain; print(clock_domain())"
    child = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert child.stdout.strip() == clock_domain()


def _unshare_time() -> list[str]:
    """argv prefix running a program in a new time namespace whose CLOCK_MONOTONIC is 5000 s ahead."""
    return ["unshare", "--time", "--monotonic", str(SHIFT_NS // NS_PER_S), "--kill-child"]


def _unshare_skip() -> str | None:
    if shutil.which("unshare") is None:
        return "needs util-linux's unshare"
    probe = subprocess.run([*_unshare_time(), "true"], capture_output=True, text=True, check=False)
    return None if probe.returncode == 0 else f"unshare --time fails here: {probe.stderr.strip()}"


@pytest.mark.root
def test_a_process_in_a_shifted_time_namespace_names_another_clock() -> None:
    if (why := _unshare_skip()) is not None:
        pytest.skip(why)
    code = "from nodes.timing import clock_domain; print(clock_domain())"
    child = subprocess.run(
        [*_unshare_time(), sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    theirs, ours = child.stdout.strip(), clock_domain()
    assert ours is not None and theirs != ours
    assert theirs.split()[0] == ours.split()[0], "same boot, another time namespace"


# -- the nodes in one event loop, the cloud's clock shifted ------------------------------------------------


class _ShiftedTime:
    """Stands in for the cloud module's ``time``: its clock 5000 s ahead, optionally running fast."""

    def __init__(self, offset_ns: int, ppm: int = 0) -> None:
        self.offset_ns, self.ppm, self.since = offset_ns, ppm, time.monotonic_ns()

    def monotonic_ns(self) -> int:
        t = time.monotonic_ns()
        return t + self.offset_ns + (t - self.since) * self.ppm // 1_000_000


@pytest.fixture
async def nodes_up(tiny_checkpoint: Path) -> AsyncIterator[tuple[tuple[str, int], tuple[str, int]]]:
    torch.set_num_threads(1)
    parts = load_parts(tiny_checkpoint, EXIT)
    cloud = CloudNode(CloudConfig(timeout=5.0), parts)
    cloud_addr = await cloud.start()
    edge = EdgeNode(EdgeConfig(cloud_addr[0], cloud_addr[1], threshold=0.0, timeout=5.0), parts)
    try:
        edge_addr = await edge.start()
        yield edge_addr, cloud_addr
    finally:
        await edge.close()
        await cloud.close()


def _shift_cloud(monkeypatch: pytest.MonkeyPatch, ppm: int = 0) -> None:
    monkeypatch.setattr(nodes.cloud, "time", _ShiftedTime(SHIFT_NS, ppm))
    monkeypatch.setattr(nodes.cloud, "clock_domain", lambda: "another-host time:[4026531834]")


def _check_cloud_procedures(doc: dict[str, Any]) -> None:
    """Procedures 3-2 and 5 are positive (within the clocks' uncertainty) and each shorter than the
    batch's latency, which the test node times on its own clock (their sum is not a check: it telescopes,
    so an offset added to one is taken from the other)."""
    check = doc["clock_check"]["procedures"]
    slack = {p: check[p]["uncertainty_ms"] for p in ("3-2", "5")}
    cloud_batches = [b for b in doc["batches"] if b["cloud"]]
    assert cloud_batches, "threshold 0 sends every sample to the cloud"
    for b in cloud_batches:
        p = b["procedures_ms"]
        assert p["3-2"] >= -slack["3-2"] and p["5"] >= -slack["5"], p
        assert p["3-2"] < b["latency_ms"] and p["5"] < b["latency_ms"], (p, b["latency_ms"])
    for proc in ("3-2", "5"):
        assert sum(b["procedures_ms"][proc] for b in cloud_batches) > 0


async def test_nodes_correct_a_cloud_clock_5000_s_ahead(
    nodes_up: tuple[tuple[str, int], tuple[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    _shift_cloud(monkeypatch)
    edge_addr, cloud_addr = nodes_up
    cfg = ClientConfig(edge=edge_addr, cloud=cloud_addr, dataset="synthetic", batch_size=16, warmup_batches=1)
    doc = (await run_test_client(cfg, dataset=synthetic_dataset(n=64, seed=3))).to_json()
    cloud, edge = doc["clock"]["cloud"], doc["clock"]["edge"]
    assert cloud["method"] == "offset-corrected" and edge["method"] == "shared-clock"
    assert abs(cloud["offset_ns"] - SHIFT_NS) <= cloud["uncertainty_ns"]
    assert cloud["before"]["at_ns"] < cloud["after"]["at_ns"], "probed before and after the run"
    assert edge["offset_ns"] == 0 and edge["uncertainty_ns"] == 0
    _check_cloud_procedures(doc)


def _cli_args(edge: tuple[str, int], cloud: tuple[str, int], out: Path, *extra: str) -> list[str]:
    return [
        "--edge", f"{edge[0]}:{edge[1]}", "--cloud", f"{cloud[0]}:{cloud[1]}", "--dataset", "synthetic",
        "--samples", "64", "--batch-size", "16", "--warmup-batches", "1", "--out", str(out), *extra,
    ]  # fmt: skip


async def test_a_drifting_cloud_clock_warns_and_fails_the_run_with_strict_clocks(
    nodes_up: tuple[tuple[str, int], tuple[str, int]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 1 % fast: the offset moves by milliseconds during the run, far beyond a tenth of procedure 5
    _shift_cloud(monkeypatch, ppm=10_000)
    edge_addr, cloud_addr = nodes_up
    out = tmp_path / "lenient.json"
    with caplog.at_level(logging.WARNING, logger="nodes.test"):
        assert await amain(build_parser().parse_args(_cli_args(edge_addr, cloud_addr, out))) == 0
    assert any(
        "clocks: procedure 5" in r.getMessage() and "moved by" in r.getMessage() for r in caplog.records
    )
    lenient = json.loads(out.read_text())
    assert lenient["clock_check"]["trusted"] is False
    assert lenient["clock"]["cloud"]["drift_ns_per_s"] == pytest.approx(1e7, rel=0.05)
    _check_cloud_procedures(lenient)  # (interpolated: a steady drift is still corrected)

    strict = tmp_path / "strict.json"
    with pytest.raises(ClockError, match=r"--strict-clocks.*procedure") as failed:
        await amain(build_parser().parse_args(_cli_args(edge_addr, cloud_addr, strict, "--strict-clocks")))
    assert failed.value.exit_code == 1
    assert json.loads(strict.read_text())["clock_check"]["trusted"] is False, "records kept to inspect"


# -- the node programs, the cloud in a time namespace 5000 s ahead -----------------------------------------


def _programs_run(
    checkpoint: Path, tmp_path: Path, procs: list[subprocess.Popen[str]], cloud_wrapper: list[str]
) -> dict[str, Any]:
    py = sys.executable
    common = ["--checkpoint", str(checkpoint), "--exit", str(EXIT), "--threads", "1"]
    cloud = spawn([*cloud_wrapper, py, "-m", "nodes.cloud", "--listen", "127.0.0.1:0", *common])
    procs.append(cloud)
    cloud_addr = wait_ready(cloud)
    edge = spawn(
        [py, "-m", "nodes.edge", "--listen", "127.0.0.1:0", "--cloud", host_port(cloud_addr),
         "--threshold", "0", *common]
    )  # fmt: skip
    procs.append(edge)
    edge_addr = wait_ready(edge)
    out = tmp_path / "records.json"
    done = subprocess.run(
        [py, "-m", "nodes.test", *_cli_args(edge_addr, cloud_addr, out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


@pytest.mark.slow
def test_programs_on_one_host_record_the_shared_clock(
    tiny_checkpoint: Path, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    doc = _programs_run(tiny_checkpoint, tmp_path, procs, [])
    assert {n: c["method"] for n, c in doc["clock"].items()} == {
        "edge": "shared-clock",
        "cloud": "shared-clock",
    }
    assert doc["clock_check"]["trusted"] is True, "a shared clock adds no uncertainty"
    assert all(c["domain"] == clock_domain() for c in doc["clock"].values())


@pytest.mark.slow
@pytest.mark.root
def test_programs_correct_a_cloud_in_a_time_namespace_5000_s_ahead(
    tiny_checkpoint: Path, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    if (why := _unshare_skip()) is not None:
        pytest.skip(why)
    doc = _programs_run(tiny_checkpoint, tmp_path, procs, _unshare_time())
    cloud, edge = doc["clock"]["cloud"], doc["clock"]["edge"]
    assert cloud["method"] == "offset-corrected" and edge["method"] == "shared-clock"
    # the namespace's offset is exactly 5000 s, and the estimate lies within its stated uncertainty
    assert abs(cloud["offset_ns"] - SHIFT_NS) <= cloud["uncertainty_ns"], cloud
    # one host, one clock: the offset may move between the probes only by their uncertainties
    moved = cloud["after"]["offset_ns"] - cloud["before"]["offset_ns"]
    assert abs(moved) <= cloud["before"]["uncertainty_ns"] + cloud["after"]["uncertainty_ns"], cloud
    _check_cloud_procedures(doc)
