"""Other architectures beside the paper's CNN: per model and exit, what the exit knows (its accuracy),
what it costs the link (feature bytes per sample) and what a run made of it (local exits, accuracy,
latency).

    python -m reports.architectures RESULTS...     # the table, as GitHub Markdown

Results files of models built by a factory (``--model-spec``, ``models.torchvision_exits``) carry the
model's name, parameters, feature bytes per cut and per-exit test accuracy in ``config.model_info``;
the paper CNN's files written before that was recorded show "–" there.
"""

from __future__ import annotations

from collections.abc import Sequence

from reports.loader import ResultsFile
from reports.tables import Cell, Table


def _pct(r: ResultsFile, metric: str) -> float | None:
    v = r.metric(metric)
    return None if v is None else 100.0 * v


def _local_share(r: ResultsFile) -> float | None:
    local, samples = r.metric("local_exits"), r.metric("samples")
    return None if local is None or not samples else 100.0 * local / samples


def other_model(r: ResultsFile) -> str | None:
    """The factory spec of the model a results file ran, when it is not the paper's CNN (else None)."""
    info = r.config.get("model_info")
    spec = info.get("spec") if isinstance(info, dict) else None
    return spec if isinstance(spec, str) and spec else None


def model_label(r: ResultsFile) -> str:
    """The model a results file ran: its recorded name (``resnet18``), or the paper CNN's kind."""
    info = r.config.get("model_info")
    spec = info.get("spec") if isinstance(info, dict) else None
    name = info.get("name") if isinstance(info, dict) else None
    if spec and isinstance(name, str):
        return name
    return f"paper CNN ({r.kind})"


def _model_figure(r: ResultsFile, key: str, exit_: int | None) -> float | None:
    """``model_info[key][exit]`` (feature bytes, test accuracy) where the results file recorded it."""
    info = r.config.get("model_info")
    table = info.get(key) if isinstance(info, dict) else None
    value = table.get(str(exit_ or 0)) if isinstance(table, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


def architectures_table(results: Sequence[ResultsFile], caption: str | None = None) -> Table:
    """Per model and exit: the exit's accuracy on the whole test split (its training log), the float32
    feature bytes per sample the edge sends the cloud there, and the run's local exits, accuracies and
    latencies (medians across runs). ``caption``: what the runs share (default: their dataset)."""
    rows: list[tuple[Cell, ...]] = []
    for r in sorted(results, key=lambda r: (model_label(r), r.exit or 0, r.threshold)):
        local = _local_share(r)
        params = r.config.get("model_info", {}).get("parameters")
        rows.append(
            (
                model_label(r),
                None if not isinstance(params, int) else f"{params / 1e6:.2f} M",
                r.exit or 0,
                r.threshold,
                None if (a := _model_figure(r, "test_accuracy", r.exit)) is None else 100 * a,
                _model_figure(r, "feature_bytes", r.exit),
                local,
                _pct(r, "edge_accuracy"),
                _pct(r, "overall_accuracy"),
                r.metric("edge_latency_ms"),
                r.metric("cloud_latency_ms"),
                r.metric("overall_latency_ms"),
            )
        )
    if caption is None and results:
        caption = str(results[0].config.get("dataset"))
    return Table(
        f"Architectures beside the paper's CNN{f' ({caption})' if caption else ''}",
        (
            "model",
            "parameters",
            "exit",
            "T",
            "exit accuracy % (all test samples)",
            "feature bytes / sample",
            "local exits %",
            "edge accuracy %",
            "overall accuracy %",
            "edge latency ms",
            "cloud latency ms",
            "overall latency ms",
        ),
        tuple(rows),
        ("", "", "", "g", ".2f", ".0f", ".1f", ".2f", ".2f", ".2f", ".2f", ".3f"),
        "Exit accuracy: every test sample classified at that exit, from the model's training (no early "
        "exiting). Feature bytes: what the edge sends the cloud for each sample that does not exit "
        "locally (float32). The rest: medians across the runs of each point.",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m reports.architectures RESULTS...``: the architectures table, as GitHub Markdown."""
    from contract.cli import Parser
    from reports.loader import load_results
    from reports.tables import render

    p = Parser(prog="python -m reports.architectures", description=main.__doc__)
    p.add_argument("results", nargs="+", help="results files or folders of them")
    args = p.parse_args(argv)
    print(render(architectures_table(load_results(args.results)), "github"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
