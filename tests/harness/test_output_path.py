"""A results file that cannot be written is refused before the run, and one that fails at the end is
saved elsewhere: a run is never lost to a typo in --out or a full disk."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from contract.results import Results
from harness import cli
from harness.config import RunConfig
from harness.errors import ConfigError
from harness.results import load_results

from .helpers import make_results


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[RunConfig]:
    """Runs that take no time and return fixed results; the list says whether one started."""
    started: list[RunConfig] = []

    def fake_run(cfg: RunConfig, hosts: Path | None = None) -> Results:
        started.append(cfg)
        return make_results()

    monkeypatch.setattr(cli, "_run", fake_run)
    return started


def main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.mark.parametrize("command", [[], ["record-baseline"]])
def test_an_unwritable_out_is_refused_before_the_run(
    capsys: pytest.CaptureFixture[str], runs: list[RunConfig], tmp_path: Path, command: list[str]
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for out, why in [
        ("/proc/x.json", "under /proc"),
        ("/sys/x.json", "under /sys"),
        (str(tmp_path), "is a directory"),
        (str(a_file / "x.json"), "is a file, not a directory"),
    ]:
        code, _, err = main(capsys, *command, "--out", out)
        assert code == 2 and err.startswith(f"error: --out {out} ") and why in err, err
        assert err.count("\n") == 1
    assert runs == []


def test_too_little_free_space_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.results import MIN_FREE_BYTES, check_output_dir, check_output_path

    real = shutil.disk_usage

    def full(path: Any) -> Any:
        return real(path)._replace(free=MIN_FREE_BYTES // 2)

    check_output_path(tmp_path / "new" / "dirs" / "r.json")  # (folders that the write creates are fine)
    monkeypatch.setattr(shutil, "disk_usage", full)
    with pytest.raises(ConfigError, match=r"only 4\.0 MiB free in .*: free some space or choose another"):
        check_output_path(tmp_path / "r.json")
    with pytest.raises(ConfigError, match="--out-dir"):
        check_output_dir(tmp_path / "sweep")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a folder without write permission")
def test_a_folder_without_write_permission_is_refused(tmp_path: Path) -> None:
    from harness.results import check_output_path

    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ConfigError, match="cannot be written"):
        check_output_path(locked / "r.json")


def test_a_sweep_into_an_unwritable_folder_is_refused_before_it_starts(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import harness.study

    def no_sweep(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the sweep started")

    monkeypatch.setattr(harness.study, "run_study", no_sweep)
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    code, _, err = main(capsys, "sweep", "--models", "sem", "--exits", "1", "--out-dir", str(a_file))
    assert code == 2 and err == f"error: --out-dir {a_file} is a file, not a directory\n"


def test_results_that_cannot_be_written_at_the_end_are_saved_elsewhere(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The folder of --out passes the check but is gone when the run ends (a file stands there)."""
    folder = tmp_path / "results"
    folder.mkdir()
    out = folder / "point.json"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    def run_that_loses_the_folder(cfg: RunConfig, hosts: Path | None = None) -> Results:
        folder.rmdir()
        folder.write_text("in the way")
        return make_results()

    monkeypatch.setattr(cli, "_run", run_that_loses_the_folder)
    code, stdout, err = main(capsys, "--out", str(out))
    assert code == 1
    assert "per-procedure time per batch" in stdout  # the summary is printed all the same
    saved = cwd / "point.json"
    assert err.startswith(f"error: cannot write results file {out}: ") and err.count("\n") == 1
    assert err.endswith(f"; the results were saved to {saved} instead\n")
    assert load_results(saved).runs
