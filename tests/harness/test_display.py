"""The printed summary: one warning for too few repeats, per-figure warnings for real instability."""

from __future__ import annotations

import dataclasses

from harness.display import format_summary
from harness.results import aggregate_runs

from .helpers import make_results


def test_two_runs_give_one_too_few_warning() -> None:
    results = make_results(runs=2)
    text = format_summary(results)
    warnings = [line for line in text.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: 2 runs are too few to judge the stability of any figure (pyperf's rules need at least 3): "
        "use --repeat 3 or more"
    ]


def test_a_really_unstable_figure_is_named() -> None:
    results = make_results(runs=3)
    runs = list(results.runs)
    far = dataclasses.replace(runs[2].summary, overall_latency_ms=3 * runs[2].summary.overall_latency_ms)
    runs[2] = dataclasses.replace(runs[2], summary=far)  # one run far off the others
    results = dataclasses.replace(results, runs=tuple(runs), aggregate=aggregate_runs(runs))
    text = format_summary(results)
    assert "warning: overall_latency_ms is unstable across runs" in text
    assert "too few" not in text


def test_a_model_other_than_the_paper_s_is_named_by_its_own_name() -> None:
    results = make_results(runs=1)
    assert format_summary(results).splitlines()[0].startswith(f"{results.config.model} exit")
    info = {"name": "resnet18", "spec": "models.torchvision_exits:resnet18"}
    config = dataclasses.replace(results.config, extra={**results.config.extra, "model_info": info})
    head = format_summary(dataclasses.replace(results, config=config)).splitlines()[0]
    assert head.startswith(f"resnet18 exit {results.config.exit}, T = ")


def test_a_run_under_an_exit_policy_says_so_not_one_exit() -> None:
    results = make_results(runs=1)
    request = {**(results.config.request or {}), "exit_policy": "adaptive"}
    config = dataclasses.replace(results.config, request=request)
    head = format_summary(dataclasses.replace(results, config=config)).splitlines()[0]
    assert head.startswith(
        f"{results.config.model}, exits chosen by the adaptive policy (from exit {results.config.exit}), T = "
    )
