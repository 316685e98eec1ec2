"""The executor logs, runs argv lists without a shell, and raises with the command's stderr."""

from __future__ import annotations

import logging
import sys

import pytest

from netem import CommandError, Executor


def test_success_returns_output_and_keeps_history(caplog: pytest.LogCaptureFixture) -> None:
    ex = Executor()
    with caplog.at_level(logging.INFO, logger="netem.executor"):
        r = ex.run([sys.executable, "-c", "print('hi')"])
    assert r.stdout.strip() == "hi" and r.returncode == 0
    assert ex.history == [(sys.executable, "-c", "print('hi')")]
    assert "run: " in caplog.text and "-c" in caplog.text


def test_failure_carries_stderr_and_status() -> None:
    with pytest.raises(CommandError) as info:
        Executor().run(
            [sys.executable, "-c", "import sys; sys.stderr.write('boom: no such qdisc'); sys.exit(3)"]
        )
    err = info.value
    assert err.returncode == 3
    assert "boom: no such qdisc" in err.stderr
    assert "boom: no such qdisc" in str(err) and "status 3" in str(err)


def test_no_shell_is_involved() -> None:
    r = Executor().run(["echo", "$HOME;", "rm -rf /"])
    assert r.stdout.strip() == "$HOME; rm -rf /"


def test_check_false_returns_the_failure() -> None:
    r = Executor().run(["false"], check=False)
    assert r.returncode == 1


def test_missing_command() -> None:
    with pytest.raises(CommandError, match="not found"):
        Executor().run(["/nonexistent/tc", "qdisc"])


def test_timeout() -> None:
    with pytest.raises(CommandError, match="timed out"):
        Executor(timeout_s=0.2).run(["sleep", "5"])
