"""The main report with runs of models other than the paper's CNN (``--model-spec``, ResNet-18, MobileNetV2):
an architectures section beside the CNN, and the CNN's own tables and claims as they were without them."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from reports import build_report
from reports.loader import load_results
from reports.tables import group_scenarios
from tests.reports.conftest import results_doc, run, small_grid, summary

# (the scenario tables of the CNN: what runs of other models must leave as they were)
CNN_TABLES = (
    "control",
    "claims",
    "sem_vs_mem",
    "fidelity",
    "exits",
    "accuracy",
    "latency",
    "threshold",
    "spread",
)


def other_model_doc(name: str, exit_: int, t: float, rate: str = "10mbit", **config: Any) -> dict[str, Any]:
    local = 40 + 10 * exit_
    runs = [
        run(i, summary(local, 100 - local, 0.9, 0.8, 0.85, 2.0 + exit_, 6.0, 0.5 + 0.1 * i)) for i in range(2)
    ]
    doc = results_doc("mem", exit_, t, runs, rate=rate)
    doc["config"]["model_info"] = {
        "name": name,
        "spec": f"models.torchvision_exits:{name}",
        "class": f"models.torchvision_exits.{name}",
        "parameters": 700_000,
        "feature_bytes": {"0": 3136, "1": 4000 // exit_ * 4, "2": 2000, "3": 1000},
        "test_accuracy": {"1": 0.81, "2": 0.86, "3": 0.9, "cloud": 0.92},
    }
    doc["config"].update(config)
    return doc


def write_all(root: Path, docs: dict[str, dict[str, Any]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, doc in docs.items():
        (root / name).write_text(json.dumps(doc))
    return root


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The report of the small CNN grid alone, and of the same grid with ResNet-18 and MobileNetV2 runs
    (ResNet-18 also under another link, where the CNN did not run)."""
    root = tmp_path_factory.mktemp("arch")
    alone = write_all(root / "cnn", small_grid())
    others = {
        f"{m}{e}_T{t}.json": other_model_doc(m, e, t)
        for m in ("resnet18", "mobilenet_v2")
        for e in (1, 2, 3)
        for t in (0.3, 0.5)
    }
    others["resnet18_fast.json"] = other_model_doc("resnet18", 2, 0.3, rate="100mbit")
    mixed = write_all(root / "mixed", {**small_grid(), **others})
    out_alone, out_mixed = root / "out-cnn", root / "out-mixed"
    build_report([alone], out_alone)
    build_report([mixed], out_mixed)
    return out_alone, out_mixed


def test_other_models_get_an_architectures_table_beside_the_cnn(reports: tuple[Path, Path]) -> None:
    _, out = reports
    md = (out / "report.md").read_text()
    assert "## Architectures beside the paper's CNN" in md
    assert "<h2>Architectures beside the paper&#x27;s CNN</h2>" in (out / "report.html").read_text()
    table = rows(out / "tables" / "architectures_1.csv")
    by_model: dict[str, set[tuple[str, str]]] = {}
    for row in table:
        by_model.setdefault(row["model"], set()).add((row["exit"], row["T"]))
    points = {(str(e), str(t)) for e in (1, 2, 3) for t in (0.3, 0.5)}
    assert by_model["resnet18"] == by_model["mobilenet_v2"] == points
    # the CNN beside them at the points both ran (the small grid has exits 1 and 2 only)
    cnn = {(str(e), str(t)) for e in (1, 2) for t in (0.3, 0.5)}
    assert by_model["paper CNN (sem)"] == by_model["paper CNN (mem)"] == cnn
    resnet_2 = next(r for r in table if r["model"] == "resnet18" and r["exit"] == "2" and r["T"] == "0.3")
    assert float(resnet_2["feature bytes / sample"]) == 2000 and float(resnet_2["local exits %"]) == 60
    # ResNet-18 under the faster link: a table of its own, with no CNN run to set beside it
    fast = rows(out / "tables" / "architectures_2.csv")
    assert [(r["model"], r["exit"]) for r in fast] == [("resnet18", "2")]
    assert "rate 100mbit" in md.split("## Architectures")[1]


def test_the_cnns_tables_and_claims_are_unchanged_by_other_models(reports: tuple[Path, Path]) -> None:
    alone, mixed = reports
    scenarios = group_scenarios(load_results([mixed.parent / "mixed"]))
    assert len(scenarios) == 4  # the CNN, ResNet-18 and MobileNetV2 under one link, ResNet-18 under another
    cnn = next(i for i, s in enumerate(scenarios, 1) if not s.model)
    for name in CNN_TABLES:
        want = (alone / "tables" / f"{name}.csv").read_text()
        assert (mixed / "tables" / f"s{cnn}_{name}.csv").read_text() == want, name


def test_other_models_scenarios_are_named_and_not_held_to_the_papers_numbers(
    reports: tuple[Path, Path],
) -> None:
    _, out = reports
    md = (out / "report.md").read_text()
    headings = [line for line in md.splitlines() if line.startswith("## Scenario")]
    assert sum(line.endswith(", model resnet18") for line in headings) == 2
    assert sum(line.endswith(", model mobilenet_v2") for line in headings) == 1
    assert sum("model" not in line for line in headings) == 1
    # the fidelity table quotes the paper's CNN: written for the CNN's scenario only
    assert len(list((out / "tables").glob("s*_fidelity.csv"))) == 1
    assert len(list((out / "tables").glob("s*_claims.csv"))) == 4
    assert md.count("not the paper's CNN: the claims above test") == 3


def test_no_architectures_section_for_the_cnn_alone(reports: tuple[Path, Path]) -> None:
    alone, _ = reports
    assert "Architectures" not in (alone / "report.md").read_text()
    assert not list((alone / "tables").glob("architectures*"))


def test_a_node_off_the_cpu_is_named_in_the_scenario(tmp_path: Path) -> None:
    on_gpu = other_model_doc(
        "resnet18", 1, 0.3, devices={"edge": {"device": "cpu"}, "cloud": {"device": "cuda:0"}}
    )
    on_cpu = other_model_doc("resnet18", 1, 0.3)
    write_all(tmp_path / "r", {"gpu.json": on_gpu, "cpu.json": on_cpu})
    captions = sorted(s.caption() for s in group_scenarios(load_results([tmp_path / "r"])))
    assert captions == [
        "fashion-mnist, rate 10mbit, delay 5ms, batch 32, cloud on cuda:0, model resnet18",
        "fashion-mnist, rate 10mbit, delay 5ms, batch 32, model resnet18",
    ]
