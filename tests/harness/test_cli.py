"""The command line: every user error is one clear line and exit code 2, never a traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from contract.results import Results
from harness import cli


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def base_args(ckpt: Path) -> list[str]:
    return [
        "--dataset",
        "synthetic",
        "--checkpoint",
        str(ckpt),
        "--exit",
        "2",
        "--samples",
        "16",
        "--batch-size",
        "8",
        "--no-calibration",
    ]


def test_missing_dataset_says_how_to_install(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "--data-dir", str(tmp_path / "nowhere"))
    assert code == 2
    assert err.startswith("error: ") and "Fashion-MNIST" in err
    assert "apt" in err or "install" in err


def test_missing_checkpoint(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "--dataset", "synthetic", "--checkpoint", str(tmp_path / "no.pt"))
    assert code == 2 and "not found" in err


def test_corrupt_checkpoint(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """One line in our words; never torch's advice to load the file with ``weights_only=False``."""
    import torch

    class Code:
        def __reduce__(self) -> tuple[object, ...]:
            return (print, ("ran code from a checkpoint",))

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    evil = tmp_path / "evil.pt"
    torch.save({"format": "localexit-checkpoint/1", "x": Code()}, evil)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(evil.read_bytes()[:100])
    for path in (bad, evil, truncated):
        code, out, err = run_cli(capsys, "--dataset", "synthetic", "--checkpoint", str(path))
        assert code == 2 and "ran code" not in out
        assert err.startswith(f"error: checkpoint {path} is not a valid localexit checkpoint (")
        assert err.count("\n") == 1, err
        assert "weights_only" not in err


def test_mismatched_checkpoint(capsys: pytest.CaptureFixture[str], tiny_sem3_checkpoint: Path) -> None:
    code, _, err = run_cli(
        capsys,
        "--dataset",
        "synthetic",
        "--model",
        "mem",
        "--exit",
        "3",
        "--checkpoint",
        str(tiny_sem3_checkpoint),
    )
    assert code == 2 and "sem-3" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--exit", "9"], "exit 9 is out of range"),
        (["--exit", "0"], "exit 0 is out of range"),
        (["--model", "sem"], "--model/--exit: a sem model needs a local exit K in 1..8"),
        (["--model", "standard", "--exit", "3"], "only the cloud exit"),
        (["--threshold", "1.5"], "[0, 1]"),
        (["--batch-size", "0"], "positive integer"),
        (["--cloud-cpuset", "0-x"], "bad --cloud-cpuset: cpuset '0-x' must look like"),
        (["--cloud-cpuset", "4095"], "--cloud-cpuset 4095 asks for CPUs this machine does not give us"),
        (["--tcp-cc", "Cubic!"], "--tcp-cc takes a congestion control's name as the kernel lists it"),
    ],
)
def test_bad_options(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and message in err


@pytest.mark.parametrize(
    ("option", "value"), [("--bw", "10mbps"), ("--bw", "fast"), ("--delay", "20"), ("--loss", "150%")]
)
def test_bad_link_units(
    capsys: pytest.CaptureFixture[str], tiny_checkpoint: Path, option: str, value: str
) -> None:
    code, _, err = run_cli(capsys, *base_args(tiny_checkpoint), option, value)
    assert code == 2
    assert f"{option} {value}" in err and "Units follow tc" in err


def test_port_in_use(capsys: pytest.CaptureFixture[str], tiny_checkpoint: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        code, _, err = run_cli(
            capsys, *base_args(tiny_checkpoint), "--isolation", "loopback", "--ports", f"{port},{port + 1}"
        )
    assert code == 2 and f"port {port} on 127.0.0.1 is already in use" in err


def test_bad_ports_syntax(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--ports", "70000"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument --ports: --ports needs CLOUD,EDGE") and err.count("\n") == 2


def test_keyboard_interrupt_exits_130(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(argv: list[str]) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_run", interrupted)
    code, _, err = run_cli(capsys)
    assert code == 130 and "no results file written" in err


def test_check_with_unusable_baseline(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "check", "--baseline", str(tmp_path / "missing.json"))
    assert code == 2 and "missing.json: no such file" in err
    bad = tmp_path / "b.json"
    bad.write_text('{"schema": "something/2"}')
    code, _, err = run_cli(capsys, "check", "--baseline", str(bad))
    assert code == 2 and "schema" in err


def test_check_exit_codes_on_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from harness.results import write_results

    from .helpers import make_results

    # (five runs a side: the check judges runs, and needs at least three a side for an interval)
    write_results(tmp_path / "base.json", make_results(runs=5, seed=0))
    write_results(tmp_path / "same.json", make_results(runs=5, seed=5))
    write_results(tmp_path / "slow.json", make_results(runs=5, seed=5, batch_ms=3.0))
    code, out, _ = run_cli(
        capsys, "check", "--baseline", str(tmp_path / "base.json"), "--results", str(tmp_path / "same.json")
    )
    assert code == 0 and "no regression" in out
    code, out, _ = run_cli(
        capsys, "check", "--baseline", str(tmp_path / "base.json"), "--results", str(tmp_path / "slow.json")
    )
    assert code == 1 and "REGRESSION" in out


def test_check_confirms_a_regression_with_a_fresh_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``check`` re-runs the configuration when it finds a regression: a slow first run that the re-run
    does not repeat is inconclusive (exit 0); one the re-run repeats fails (exit 1); --confirm 0 does
    not re-run."""
    from harness.config import RunConfig, config_to_dict
    from harness.results import write_results

    from .helpers import make_results

    request = config_to_dict(RunConfig(model="mem", exit=5, dataset="synthetic", samples=160, batch_size=8))
    write_results(tmp_path / "base.json", make_results(runs=5, seed=0, request=request))

    def check_with(*speeds: float, confirm: str = "1") -> tuple[int, str, str, int]:
        runs = iter(speeds)
        calls = []

        def fake_run(cfg: RunConfig) -> Results:
            calls.append(cfg)
            return make_results(runs=5, seed=10 * len(calls), batch_ms=next(runs), request=request)

        monkeypatch.setattr(cli, "_run", fake_run)
        code, out, err = run_cli(
            capsys, "check", "--baseline", str(tmp_path / "base.json"), "--confirm", confirm
        )
        return code, out, err, len(calls)

    code, out, err, calls = check_with(2.0)
    assert (code, calls) == (0, 1) and "no regression" in out and "re-running" not in err
    code, out, err, calls = check_with(3.0, 2.0)
    assert (code, calls) == (0, 2) and "not shown again by a re-run" in out and "re-running" in err
    code, out, _, calls = check_with(3.0, 3.0)
    assert (code, calls) == (1, 2) and "REGRESSION" in out and "shown again by a re-run" in out
    code, out, _, calls = check_with(3.0, 3.0, 2.0, confirm="2")
    assert (code, calls) == (0, 3)
    code, out, _, calls = check_with(3.0, confirm="0")
    assert (code, calls) == (1, 1) and "confirmation" not in out
    code, _, err = run_cli(capsys, "check", "--baseline", str(tmp_path / "base.json"), "--confirm", "-1")
    assert code == 2 and "--confirm" in err


def test_a_refusal_without_root_is_one_line(
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tiny_checkpoint: Path,
    tmp_path: Path,
) -> None:
    """Not root: the loopback fallback is said once, in the refusal, not also in a WARNING before it."""
    import os

    import netem.testbed
    from netem.probe import Capabilities

    not_root = Capabilities(
        root=False,
        iproute2=True,
        netns=False,
        qdiscs=frozenset(),
        tun=False,
        cgroup=None,
        notes=("not root: no namespaces, tc or cgroups",),
    )
    monkeypatch.setattr(netem.testbed, "probe_capabilities", lambda: not_root)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    out_file = str(tmp_path / "r.json")
    code, out, err = run_cli(capsys, *base_args(tiny_checkpoint), "--loss", "1%", "--out", out_file)
    assert code == 2 and out == ""
    assert err.startswith("error: not running as root") and err.count("\n") == 1, err
    assert [r.getMessage() for r in caplog.records if r.levelname in ("WARNING", "ERROR")] == []
