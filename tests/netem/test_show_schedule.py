"""``python -m netem.show_schedule``: a schedule or a trace printed as its steps, errors on one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def show(*args: str) -> subprocess.CompletedProcess[str]:
    # -W error: the program must not be a module the package imported first (runpy warns then)
    argv = [sys.executable, "-W", "error", "-m", "netem.show_schedule", *args]
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)


def test_prints_each_step_without_warnings() -> None:
    out = show("--show", "0s:10mbit/5ms,20s:1mbit/40ms")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    lines = out.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].split()[:5] == ["0s", "rate", "10mbit", "delay", "5ms"]
    assert lines[1].split()[:5] == ["20s", "rate", "1mbit", "delay", "40ms"]


def test_trace_as_rate_steps(tmp_path: Path) -> None:
    # 10 deliveries per ms for 1 s, then 1 per ms for 1 s: 120 Mbit/s then 12 Mbit/s (1500-byte packets)
    trace = tmp_path / "t.mahimahi"
    trace.write_text(
        "".join(f"{ms}\n" * 10 for ms in range(0, 1000)) + "".join(f"{ms}\n" for ms in range(1000, 2000))
    )
    out = show("--show-trace", str(trace), "--window-ms", "1000")
    assert out.returncode == 0, out.stderr
    rates = [line.split()[2] for line in out.stdout.splitlines()]
    assert rates == ["120mbit", "12mbit"]


def test_bad_window_is_one_line() -> None:
    out = show("--show-trace", "whatever", "--window-ms", "0")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["error: --window-ms must be at least 1, got 0"]
