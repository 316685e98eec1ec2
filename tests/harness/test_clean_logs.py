"""``harness clean`` removes the node-log folders of killed runs, keeps those of runs in progress, and
names the ones it cannot attribute to a run."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import netem
from harness import cli
from harness.config import RunConfig
from harness.errors import NodeFailure
from harness.runner import run_experiment

from .conftest import FakeCommands, FakeTestbed


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def no_testbed_leftovers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``netem.clean`` of namespaces and cgroups is not what these tests are about: it finds nothing."""
    calls: list[str] = []

    def clean(prefix: str, *, force: bool = False) -> list[str]:
        calls.append(prefix)
        return []

    monkeypatch.setattr(netem, "clean", clean)
    return calls


def test_a_failed_runs_kept_logs_name_their_owner(
    small_config: RunConfig, fake_testbed: type[FakeTestbed], monkeypatch: pytest.MonkeyPatch
) -> None:
    from netem.cleanup import LOG_OWNER_FILE

    monkeypatch.setenv("FAKE_FAIL", "cloud")
    with pytest.raises(NodeFailure):
        run_experiment(small_config, testbed_factory=fake_testbed, commands=FakeCommands())
    (kept,) = Path(tempfile.gettempdir()).glob("localexit-*")
    assert any(kept.rglob("*.log"))
    assert int((kept / LOG_OWNER_FILE).read_text()) == os.getpid()


def test_clean_removes_the_logs_of_dead_runs_only(
    capsys: pytest.CaptureFixture[str], no_testbed_leftovers: list[str]
) -> None:
    from netem.cleanup import LOG_OWNER_FILE, make_log_dir

    tmp = Path(tempfile.gettempdir())
    assert tmp != Path("/tmp")  # (the conftest gives each test its own: never clean the real one here)
    running = make_log_dir()  # owned by this process, which is alive
    killed = make_log_dir()
    (killed / LOG_OWNER_FILE).write_text(f"{dead_pid()}\n")
    (killed / "run-0").mkdir()
    (killed / "run-0" / "cloud.log").write_text("the log of a killed run\n")
    unmarked = tmp / "localexit-older"
    unmarked.mkdir()
    not_a_folder = tmp / "localexit-results-x.json"
    not_a_folder.write_text("{}")

    code = cli.main(["clean"])
    out = capsys.readouterr().out
    assert code == 0
    assert not killed.exists() and running.is_dir() and unmarked.is_dir() and not_a_folder.is_file()
    assert f"removed log folder {killed}" in out
    assert f"kept {unmarked}: nothing in it says which run made it" in out
    assert "1 leftover object(s) removed" in out
    assert no_testbed_leftovers == ["lx"]

    # --force: the folders of live runs too; a clean of one run's prefix leaves every log folder alone.
    assert cli.main(["clean", "--prefix", "lx3f9a1c", "--force"]) == 0
    assert running.is_dir()
    assert cli.main(["clean", "--force"]) == 0
    assert not running.exists() and unmarked.is_dir()


def test_log_folders_elsewhere_and_their_report(tmp_path: Path) -> None:
    from netem.cleanup import LOG_OWNER_FILE, clean_log_dirs, make_log_dir

    live = make_log_dir(tmp_path)
    dead = make_log_dir(tmp_path)
    (dead / LOG_OWNER_FILE).write_text(f"{dead_pid()}\n")
    garbled = make_log_dir(tmp_path)
    (garbled / LOG_OWNER_FILE).write_text("not a pid\n")
    result = clean_log_dirs(tmp_path)
    assert result.removed == (dead,)
    assert result.unowned == (garbled,)
    assert result.failed == ()
    assert live.is_dir()
