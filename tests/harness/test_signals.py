"""A signal at any moment of a run's start-up: the harness ends within seconds with exit code 130 and one
line, no traceback, no results file, and nothing of the run left -- no namespace, cgroup, node process,
owner file or log folder.

Moments no outside timing can hit (inside the fork of a node) are reached with netem's test hook
(``LOCALEXIT_SIGNAL_AT``: the process at that point sends the signal); the others by signalling the
harness when its log (``-v``) reaches a step, after a random delay or not.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from models.checkpoint import default_checkpoint

ROOT = Path(__file__).resolve().parents[2]
#: The README's experiment, with the edge in a cgroup (its fork enters it) and the log on stderr.
ARGS = ["-v", "--model", "mem", "--exit", "5", "--samples", "320", "--edge-cpus", "1", "--no-calibration"]
#: From the step just before the signal to the harness's exit: teardown kills and waits (bounded),
#: then removes namespaces and the cgroup; about 0.3 s on an idle 2-core VM.
ENDS_WITHIN_S = 8.0
PREFIX_RE = re.compile(r"\b(lx[0-9a-f]+)-")


@dataclass(frozen=True)
class Trial:
    code: int
    lines: tuple[tuple[float, str], ...]  # (time.monotonic() when read, line) of the harness's stderr
    ended: float
    sent: float | None  # when the test sent the signal itself

    @property
    def stderr(self) -> str:
        return "".join(line for _, line in self.lines)

    def first(self, pattern: str) -> float:
        for at, line in self.lines:
            if re.search(pattern, line):
                return at
        raise AssertionError(f"no line matches {pattern!r}:\n{self.stderr}")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped MEM checkpoint, copied: its path in the nodes' argv tells this test's nodes apart."""
    path = tmp_path_factory.mktemp("signals") / "mem.pt"
    shutil.copyfile(default_checkpoint("mem", 5, "fashion-mnist"), path)
    return path


def _default_sigint() -> None:
    # A test runner started in the background has Ctrl-C ignored, and children inherit that; the
    # harness must see SIGINT as a terminal's Ctrl-C would deliver it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run(
    tmp_path: Path,
    checkpoint: Path,
    *,
    signal_at: str | None = None,
    trigger: str | None = None,
    delay_s: float = 0.0,
    sig: signal.Signals = signal.SIGINT,
    group: bool = False,
) -> Trial:
    """Start the harness, signal it (by the hook, or when a stderr line matches ``trigger``), and wait.

    ``group``: signal its whole process group, nodes and ``ip`` commands too, as a terminal's Ctrl-C does.
    """
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    if signal_at is not None:
        from netem._proc import SIGNAL_AT_ENV

        env[SIGNAL_AT_ENV] = f"{signal_at}:{sig.name}"
    argv = [sys.executable, "-m", "harness", *ARGS, "--checkpoint", str(checkpoint)]
    proc = subprocess.Popen(
        [*argv, "--out", str(tmp_path / "r.json")],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,  # noqa: PLW1509 -- sets one signal disposition, no locks
        start_new_session=True,  # (a process group of its own, for `group`)
    )
    lines: list[tuple[float, str]] = []
    seen = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append((time.monotonic(), line))
            if trigger is not None and re.search(trigger, line):
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sent = None
    try:
        if trigger is not None:
            assert seen.wait(120), f"the harness never logged {trigger!r}"
            time.sleep(delay_s)
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
            sent = time.monotonic()
        proc.wait(timeout=120)
        ended = time.monotonic()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
    return Trial(proc.returncode, tuple(lines), ended, sent)


def _leftovers(prefixes: set[str], marker: str) -> list[str]:
    """What carries one of the run's prefixes (namespaces, cgroups, owner files), and processes whose
    command line names one of them or ``marker`` (this test's checkpoint or temporary folder)."""
    from netem.cleanup import OWNER_DIR

    named = tuple(f"{p}-" for p in prefixes)
    out = [f"netns {n}" for n in _netns() if n.startswith(named)]
    for parent in [Path("/sys/fs/cgroup"), *Path("/sys/fs/cgroup").iterdir()]:
        if parent.is_dir() and not parent.is_symlink():
            out += [f"cgroup {d}" for d in parent.iterdir() if d.is_dir() and d.name.startswith(named)]
    out += [f"owner file {f}" for f in (OWNER_DIR.glob("lx*.owner") if OWNER_DIR.is_dir() else ())
            if f.name.removesuffix(".owner") in prefixes]  # fmt: skip
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline or any(n in cmdline for n in named):
                out.append(f"process {entry.name}: {cmdline[:160]}")
    return out


def _netns() -> list[str]:
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True, timeout=30)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def _check(trial: Trial, anchor: float, tmp_path: Path, checkpoint: Path, what: str) -> None:
    prefixes = set(PREFIX_RE.findall(trial.stderr))
    left = _leftovers(prefixes, str(checkpoint.parent))
    context = f"{what}; the harness's stderr:\n{trial.stderr}"
    try:
        assert trial.code == 130, context
        assert "Traceback" not in trial.stderr and "Exception ignored" not in trial.stderr, context
        said = [line for _, line in trial.lines if not line.startswith(("INFO ", "DEBUG "))]
        assert said == ["interrupted: nodes and testbed torn down; no results file written\n"], context
        assert not (tmp_path / "r.json").exists(), context
        assert prefixes, f"the run's names never showed in its log; {context}"
        assert left == [], f"left behind: {left}; {context}"
        assert list((tmp_path / "tmp").iterdir()) == [], f"the run's log folder is left; {context}"
        assert trial.ended - anchor < ENDS_WITHIN_S, f"ended {trial.ended - anchor:.1f} s after; {context}"
    finally:
        if left:  # (what a failed check found is removed, so that the next test starts clean)
            from netem import clean

            for prefix in prefixes:
                clean(prefix, force=True)
            for item in left:
                if item.startswith("process "):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(item.split()[1].rstrip(":")), signal.SIGKILL)


#: (hook point, signal, the log line just before that point)
HOOKED = [
    ("netns", signal.SIGTERM, r"ip netns add lx\w+-test"),  # a namespace made, its removal not recorded
    ("cgroup", signal.SIGINT, r"mkdir /sys/fs/cgroup/"),  # the edge's cgroup made, likewise
    ("cloud.popen", signal.SIGINT, r"popen on cloud:"),  # before the first fork
    ("edge.fork", signal.SIGINT, r"popen on edge:"),  # in the at-fork hooks (logging's): was dropped
    ("edge.fork", signal.SIGTERM, r"popen on edge:"),
    ("edge.preexec", signal.SIGINT, r"popen on edge:"),  # the child entering its cgroup: was orphaned
    ("edge.preexec", signal.SIGTERM, r"popen on edge:"),
    ("edge.spawned", signal.SIGTERM, r"popen on edge:"),  # the child runs, nothing holds it yet
    ("test.preexec", signal.SIGINT, r"popen on test:"),  # the last node, the others ready
]


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize(("point", "sig", "before"), HOOKED, ids=[f"{p}-{s.name}" for p, s, _ in HOOKED])
def test_signal_at_a_point_of_start_up(
    point: str, sig: signal.Signals, before: str, tmp_path: Path, checkpoint: Path
) -> None:
    trial = _run(tmp_path, checkpoint, signal_at=point, sig=sig)
    _check(trial, trial.first(before), tmp_path, checkpoint, f"{sig.name} at {point}")


#: (id, a step of the log, signal, the most seconds after it -- a random delay up to that --, whether
#: to the whole process group)
TIMED = [
    # As the edge's start is logged, its fork (the harness's memory copied) is usually under way.
    ("edge-start", r"popen on edge:", signal.SIGTERM, 0.0, False),
    ("edge-start-group", r"popen on edge:", signal.SIGINT, 0.0, True),
    ("testbed-up", r"testbed lx\w+ up", signal.SIGINT, 0.0, False),  # the nodes are about to start
    ("ready", r"edge node ready", signal.SIGTERM, 0.0, False),  # the test node is about to start
    ("starting", r"popen on cloud:", signal.SIGINT, 0.5, False),  # somewhere in the nodes' start-up
    ("starting-group", r"ip netns add", signal.SIGINT, 0.5, True),  # somewhere in the whole start-up
]


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize(
    ("trigger", "sig", "most_s", "group"), [t[1:] for t in TIMED], ids=[t[0] for t in TIMED]
)
def test_signal_after_a_step_of_start_up(
    trigger: str, sig: signal.Signals, most_s: float, group: bool, tmp_path: Path, checkpoint: Path
) -> None:
    delay_s = random.uniform(0.0, most_s)
    trial = _run(tmp_path, checkpoint, trigger=trigger, delay_s=delay_s, sig=sig, group=group)
    assert trial.sent is not None
    what = f"{sig.name}{' to the group' if group else ''} {delay_s:.3f} s after {trigger!r}"
    _check(trial, trial.sent, tmp_path, checkpoint, what)


# ---------------------------------------------------------------------------------------------------
# The pieces, in this process (no root). (Imported in each test, so that the tests above also run
# against a tree without them.)


def test_a_signal_in_a_deferred_block_comes_after_it() -> None:
    from harness.interrupts import Interrupts
    from netem._proc import signals_deferred

    done: list[str] = []
    with pytest.raises(KeyboardInterrupt), Interrupts():
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # (handlers run at the next bytecode: it would have raised by now)
            done.append("registered")
        done.append("went on")
    assert done == ["registered"]


def test_only_the_first_signal_raises() -> None:
    from harness.interrupts import Interrupts

    with Interrupts() as interrupts:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        try:
            os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C during the teardown
            time.sleep(0.05)
        except KeyboardInterrupt:
            pytest.fail("a second signal raised again, cutting the teardown short")
    assert interrupts.signum == signal.SIGTERM


class _Finalized:
    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # raised while Python runs a finalizer: it drops it
        time.sleep(0.05)


def test_an_interrupt_python_drops_is_raised_again() -> None:
    from harness.interrupts import Interrupts

    went_on = []
    with pytest.raises(KeyboardInterrupt), Interrupts():
        _Finalized()
        went_on.append(True)
    assert went_on == []


def test_the_last_line_says_what_teardown_left(capsys: pytest.CaptureFixture[str]) -> None:
    from harness.interrupts import exception_notes, report_interrupted
    from netem import LinkSpec
    from netem.errors import NetemError
    from netem.probe import Capabilities
    from netem.spec import TestbedConfig
    from netem.testbed import Testbed

    caps = Capabilities(root=False, iproute2=False, netns=False, qdiscs=frozenset(), tun=False, cgroup=None)
    tb = Testbed(TestbedConfig(prefix="lxfeed01", edge_cloud=LinkSpec()), "loopback", caps)

    def busy() -> None:
        raise NetemError(
            "could not remove cgroup(s): /sys/fs/cgroup/cpu/lxfeed01-edge: Device or resource busy"
        )

    with pytest.raises(KeyboardInterrupt) as info, tb:
        tb._push("remove edge cgroup", busy)
        raise KeyboardInterrupt
    assert report_interrupted(info.value) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("interrupted: teardown incomplete: remove edge cgroup")
    assert "lxfeed01-edge: Device or resource busy" in err and "`python -m harness clean`" in err
    assert "torn down" not in err and exception_notes(info.value)
