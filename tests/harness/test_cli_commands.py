"""The command line's shape: subcommands, --version, help texts, one-line argparse errors, negative values,
one name per option, sweeps that refuse what they would ignore, and --dry-run."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import os
from pathlib import Path
from typing import Any

import pytest

from harness import cli
from harness.config import RunConfig, config_to_dict
from harness.errors import ConfigError
from harness.results import write_results

from .helpers import make_results

COMMANDS = ("run", "sweep", "reproduce", "check", "record-baseline", "clean", "train")


def exits_with(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of a command line that argparse ends (errors, --help, --version)."""
    with pytest.raises(SystemExit) as info:
        cli.main(list(argv))
    out, err = capsys.readouterr()
    code = info.value.code
    return (code if isinstance(code, int) else 1), out, err


def returns(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def one_error_line(err: str) -> str:
    """The ``error: …`` line of a user error (plus, at most, one hint line saying where the help is)."""
    lines = err.splitlines()
    assert lines and lines[0].startswith("error: "), err
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("see python -m harness")), err
    assert "usage:" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "foo"], "invalid choice: 'foo'"),
        (["--samples", "abc"], "invalid int value: 'abc'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["sweep", "--thresholds", "x"], "expected comma-separated numbers"),
        (["check"], "the following arguments are required: --baseline"),
    ],
)
def test_argparse_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = exits_with(capsys, *argv)
    assert code == 2
    assert message in one_error_line(err)


def test_a_mistyped_command_is_an_invalid_choice_that_lists_the_commands(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = exits_with(capsys, "swep")
    line = one_error_line(err)
    assert code == 2 and "invalid choice: 'swep'" in line
    assert all(f"'{name}'" in line for name in COMMANDS)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = exits_with(capsys, "--version")
    assert code == 0 and importlib.metadata.version("localexit") in out


def test_the_help_lists_the_commands_and_the_default_one(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = exits_with(capsys, "--help")
    assert code == 0
    assert all(name in out for name in COMMANDS)
    assert "python -m harness --model mem --exit 5 --bw 10mbit" in out


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "train"])
def test_help_texts_print_as_written(capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, out, _ = exits_with(capsys, command, "--help")
    assert code == 0 and f"python -m harness {command}" in out
    assert "%%" not in out


def _options_without_help(parser: argparse.ArgumentParser) -> list[str]:
    return [
        "/".join(action.option_strings)
        for action in parser._actions
        if action.option_strings and not action.help
    ]


def test_every_option_has_a_help_text() -> None:
    from harness.parsers import build_parser
    from models.train import build_parser as train_parser
    from nodes.test import build_parser as test_node_parser

    _, commands = build_parser()
    missing = {name: _options_without_help(parser) for name, parser in commands.items()}
    missing["python -m harness train"] = _options_without_help(train_parser())
    missing["python -m nodes.test"] = _options_without_help(test_node_parser())
    assert {name: options for name, options in missing.items() if options} == {}


def capture_config(monkeypatch: pytest.MonkeyPatch) -> list[RunConfig]:
    seen: list[RunConfig] = []

    def fake_run_and_write(cfg: RunConfig, out: Path) -> int:
        seen.append(cfg)
        return 0

    monkeypatch.setattr(cli, "_run_and_write", fake_run_and_write)
    return seen


def test_the_main_command_needs_no_subcommand(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = capture_config(monkeypatch)
    assert returns(capsys, "--model", "mem", "--exit", "5", "--bw", "10mbit")[0] == 0
    assert returns(capsys, "run", "--model", "mem", "--exit", "5", "--bw", "10mbit")[0] == 0
    assert returns(capsys)[0] == 0
    assert seen[0] == seen[1]
    assert (seen[0].model, seen[0].exit, seen[0].edge_cloud.rate) == ("mem", 5, "10mbit")
    assert (seen[2].model, seen[2].exit, seen[2].edge_cloud.rate) == ("mem", 5, None)


def test_warm_up_batches_have_the_test_nodes_name_and_the_old_one_still_works(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from nodes.test import build_parser as test_node_parser

    seen = capture_config(monkeypatch)
    assert returns(capsys, "--warmup-batches", "3")[0] == 0
    assert returns(capsys, "--warmup", "4")[0] == 0
    assert [cfg.warmup_batches for cfg in seen] == [3, 4]
    assert "--warmup-batches" in test_node_parser().format_help()
    code, out, _ = exits_with(capsys, "run", "--help")
    assert "--warmup-batches" in out and "--warmup " not in out
    code, _, err = returns(capsys, "--warmup-batches", "-1")
    assert code == 2 and "--warmup-batches must be 0 or more" in err


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["--bw", "-5mbit"], "--bw -5mbit"),
        (["--delay", "-5ms"], "--delay -5ms"),
        (["--loss", "-1%"], "--loss -1%"),
        (["--bw=-5mbit"], "--bw -5mbit"),
    ],
)
def test_negative_link_values_reach_the_validator(
    capsys: pytest.CaptureFixture[str], tiny_checkpoint: Path, argv: list[str], shown: str
) -> None:
    base = ["--dataset", "synthetic", "--checkpoint", str(tiny_checkpoint), "--exit", "2", "--samples", "16"]
    code, _, err = returns(capsys, *base, *argv)
    line = one_error_line(err)
    assert code == 2 and shown in line and "Units follow tc" in line


def test_a_missing_value_is_still_reported_as_missing(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = exits_with(capsys, "--bw", "--delay", "5ms")
    assert code == 2 and "--bw: expected one argument" in one_error_line(err)


def test_more_edge_cpus_than_the_machine_has_are_refused_before_the_run(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import harness.runner

    def no_run(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise AssertionError("the run started")

    monkeypatch.setattr(harness.runner, "run_experiment", no_run)
    have = len(os.sched_getaffinity(0))
    code, _, err = returns(capsys, "--edge-cpus", str(have + 1), "--out", str(tmp_path / "r.json"))
    line = one_error_line(err)
    assert code == 2 and f"--edge-cpus {have + 1}" in line and f"at most {have}" in line


def test_edge_cpus_are_checked_against_the_machine_and_the_cpu_set() -> None:
    from harness.config import check_edge_cpus

    check_edge_cpus(RunConfig(edge_cpus="2"), usable=2)
    check_edge_cpus(RunConfig(edge_cpus="0.5", edge_cpuset="0"), usable=2)
    check_edge_cpus(RunConfig(edge_cpus="many"), usable=2)  # (its syntax is netem's to report)
    with pytest.raises(ConfigError, match="more CPUs than this machine gives us"):
        check_edge_cpus(RunConfig(edge_cpus="2.5"), usable=2)
    with pytest.raises(ConfigError, match="more CPUs than --edge-cpuset 0 holds"):
        check_edge_cpus(RunConfig(edge_cpus="2", edge_cpuset="0"), usable=4)


@pytest.fixture
def no_sweep(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Sweeps that get as far as running return 99 and run nothing."""
    started: list[Any] = []

    def fake(spec: Any, out_dir: Path, *, progress: bool) -> int:
        started.append(spec)
        return 99

    monkeypatch.setattr(cli, "_do_sweep", fake)
    return started


@pytest.mark.parametrize(
    ("argv", "instead"),
    [
        (["sweep", "--threshold", "0.5"], "--thresholds"),
        (["sweep", "--model", "mem"], "--models"),
        (["sweep", "--exit", "3"], "--exits"),
        (["sweep", "--grid", "paper", "--thresholds", "0.5"], "--grid paper fixes"),
        (["sweep", "--grid", "paper", "--models", "sem"], "--grid paper fixes"),
        (["reproduce", "--threshold", "0.5"], "python -m harness sweep"),
        (["reproduce", "--exit", "3"], "python -m harness sweep"),
    ],
)
def test_sweeps_refuse_options_they_would_ignore(
    capsys: pytest.CaptureFixture[str], no_sweep: list[Any], argv: list[str], instead: str
) -> None:
    code, _, err = returns(capsys, *argv)
    line = one_error_line(err)
    assert code == 2 and "does not take" in line and instead in line
    assert no_sweep == []


def test_sweep_dry_run_lists_the_points_and_the_time_and_runs_nothing(
    capsys: pytest.CaptureFixture[str], no_sweep: list[Any], tmp_path: Path
) -> None:
    out_dir = tmp_path / "sweep"
    argv = ["sweep", "--models", "sem", "--exits", "1-2", "--thresholds", "0.3,0.5", "--samples", "320"]
    code, out, _ = returns(capsys, *argv, "--out-dir", str(out_dir), "--dry-run")
    assert code == 0 and no_sweep == [] and not out_dir.exists()
    for label in ("sem-e1-t0.3", "sem-e1-t0.5", "sem-e2-t0.3", "sem-e2-t0.5"):
        assert f"{label}-unshaped.json" in out
    assert "0 done already, 4 to run: about" in out and "estimated from" in out

    # A sweep that has measured points estimates from them.
    done = RunConfig(model="sem", exit=1, threshold=0.3, samples=320, checkpoint=None)
    results = make_results(request=config_to_dict(done))
    results = dataclasses.replace(results, runs=(dataclasses.replace(results.runs[0], duration_s=42.0),))
    write_results(out_dir / "points" / f"{done.label()}.json", results)
    code, out, _ = returns(capsys, *argv, "--out-dir", str(out_dir), "--dry-run")
    assert code == 0
    assert "1 done already, 3 to run: about 2 min 06 s (42 s a point)" in out
    assert "measured in" in out


def test_reproduce_dry_run_lists_the_papers_grid(
    capsys: pytest.CaptureFixture[str], no_sweep: list[Any], tmp_path: Path
) -> None:
    code, out, _ = returns(capsys, "reproduce", "--quick", "--dry-run", "--out-dir", str(tmp_path / "r"))
    assert code == 0 and no_sweep == []
    assert "64 point(s)" in out and "320 samples" in out and "64 to run" in out
