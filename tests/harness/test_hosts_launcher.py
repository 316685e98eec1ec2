"""``harness.remote_node run``: the launcher of a node on its host (no ssh needed: run here)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

RUN = "lxtest01"


def launch(run_dir: Path, *argv: str, name: str = "edge-1") -> subprocess.Popen[bytes]:
    run_dir.mkdir(exist_ok=True)  # (made by `remote_node prepare` in a run)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness.remote_node",
            "run",
            "--dir",
            str(run_dir),
            "--name",
            name,
            "--",
            *argv,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def pid_of(run_dir: Path, name: str = "edge-1", timeout_s: float = 20.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return int((run_dir / f"{name}.pid").read_text())
        except (OSError, ValueError):
            time.sleep(0.05)
    raise AssertionError("no pid file")


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_launcher_passes_on_the_nodes_output_and_exit_status(tmp_path: Path) -> None:
    proc = launch(tmp_path / RUN, sys.executable, "-c", "print('READY 1.2.3.4:5'); raise SystemExit(3)")
    out, _err = proc.communicate(timeout=30)
    assert proc.returncode == 3 and out == b"READY 1.2.3.4:5\n"
    assert not list((tmp_path / RUN).glob("*.pid"))  # (gone with the node)


def test_a_node_killed_by_a_signal_says_so(tmp_path: Path) -> None:
    run = tmp_path / RUN
    proc = launch(run, "sleep", "60")
    os.kill(pid_of(run), 9)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + 9 and b"killed by signal 9 (SIGKILL)" in err


def test_signal_stops_the_nodes_whole_process_group(tmp_path: Path) -> None:
    run = tmp_path / RUN
    proc = launch(run, "sh", "-c", "sleep 60 & echo $!; wait")
    assert proc.stdout is not None
    grandchild = int(proc.stdout.readline())
    subprocess.run(
        [sys.executable, "-m", "harness.remote_node", "signal", "--dir", str(run), "--name", "edge-1"],
        check=True,
        capture_output=True,
    )
    proc.wait(timeout=30)
    time.sleep(0.2)
    assert not running(grandchild)


def test_the_node_stops_when_the_session_that_started_it_ends(tmp_path: Path) -> None:
    run = tmp_path / RUN
    proc = launch(run, "sleep", "60")
    assert proc.stdout is not None
    # The launcher's stdout is read by another process, as sshd reads it: this process lets go of the pipe
    # at once (a process this one forks meanwhile would hold it open), and the reader's end is the session's.
    reader = subprocess.Popen(["cat"], stdin=proc.stdout, stdout=subprocess.DEVNULL)
    proc.stdout.close()
    try:
        pid = pid_of(run)
        assert running(pid)
        reader.kill()  # (as when the harness's ssh client is gone and sshd closes the channel)
        reader.wait()
        proc.wait(timeout=30)
        assert not running(pid)
    finally:
        for p in (reader, proc):
            if p.poll() is None:
                p.kill()
                p.wait()
