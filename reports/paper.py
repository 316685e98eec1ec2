"""Fidelity of a study to the paper (Lee et al., ETRI Journal 2020): its setup, and its numbers beside ours.

Every number of the paper here is quoted from its text (section given); the paper prints others only as
bars in its figures, and those are not read off. The comparison is of orderings and directions: the paper
ran CIFAR-10 on other hardware and links, so absolute accuracies and times are not expected to match.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from reports import stats
from reports.claims import Claim, compare
from reports.loader import ResultsFile
from reports.tables import PAPER_THRESHOLD, Cell, Scenario, Table

PAPER_DATASET = "CIFAR-10"  # §3.2
PAPER_BATCH_SIZE = 32  # §4.1
PAPER_THRESHOLDS = (0.1, 0.3, 0.5, 0.8)  # §4.1
PAPER_TEST_SAMPLES = 10_000  # SEM-3: 5383 local + 4617 cloud exits (§4.2)

# The paper's per-point numbers, all at T = 0.3 (§4.1). Accuracies in %, latencies in ms.
SEM3_LOCAL, SEM8_CLOUD_EXITS = 5383, 861  # §4.2
SEM_EDGE_ACCURACY = {1: 87.20, 8: 95.24}  # §4.2
SEM_CLOUD_ACCURACY = {1: 88.51, 2: 86.13, 8: 58.07}  # §4.2
SEM_OVERALL_ACCURACY = {"worst": (3, 86.04), "best": (8, 92.04)}  # §4.2
MEM_OVERALL_ACCURACY = {"worst": (2, 84.31), "best": (8, 86.10)}  # §4.3
SEM_FASTEST, SEM_FASTEST_MS, SEM_SLOWEST = 5, 3.795, 1  # §4.2 (overall latency)
MEM_FASTEST, MEM_FASTEST_MS, MEM_AT_5_MS = 3, 4.82, 4.886  # §4.3 (overall latency)


@dataclass(frozen=True)
class FidelityRow:
    """One claim or ordering: what the paper reports, what these runs show, and whether they agree."""

    claim: str
    section: str
    paper: str
    ours: str
    agreement: str


def _thousands(n: int) -> str:
    return f"{n:,}".replace(",", " ")


def same_dataset(dataset: str) -> bool:
    return dataset.lower().replace("-", "").replace("_", "") == "cifar10"


def fidelity_paragraph(scn: Scenario, t: float) -> str:
    """The study's setup against the paper's, and what may therefore be compared."""
    ours = scn.dataset
    cfg = scn.config
    setup = f"these runs used {ours} ({cfg.get('samples')} test samples, batch {cfg.get('batch_size')})"
    if same_dataset(ours):
        comparable = (
            "The datasets agree, so accuracies may be compared directly; times may not (other hardware and "
            "links)."
        )
    else:
        comparable = (
            "Absolute accuracies and times are therefore not comparable; the orderings and the direction of "
            "each effect are."
        )
    at = (
        ""
        if t == PAPER_THRESHOLD
        else f" The paper's per-exit numbers are at T = {PAPER_THRESHOLD:g}; ours here are at T = {t:g}."
    )
    return (
        f"The paper trained and evaluated its models on {PAPER_DATASET} ({_thousands(PAPER_TEST_SAMPLES)} test images, "
        f"batch {PAPER_BATCH_SIZE}, T ∈ {{{', '.join(f'{x:g}' for x in PAPER_THRESHOLDS)}}}, per-exit figures "
        f"at T = {PAPER_THRESHOLD:g}); {setup}. {comparable} The table puts the numbers the paper's text "
        f"gives beside ours at the same points.{at}"
    )


def _pct(r: ResultsFile | None, metric: str) -> float | None:
    v = None if r is None else r.metric(metric)
    return None if v is None else 100.0 * v


def _text(value: float | None, fmt: str = ".2f", unit: str = " %") -> str:
    return "–" if value is None else f"{value:{fmt}}{unit}"


def _local_share(r: ResultsFile | None) -> float | None:
    local = None if r is None else r.metric("local_exits")
    samples = None if r is None else r.metric("samples")
    return None if local is None or not samples else 100.0 * local / samples


def _extremes(
    scn: Scenario, kind: str, t: float, value: Callable[[ResultsFile], float | None]
) -> tuple[tuple[int, float], tuple[int, float]] | None:
    """(lowest, highest) as (exit, value) among one kind's exit points, by the median across runs."""
    found = [
        (e, v) for e in scn.exits(t) if (r := scn.get(kind, e, t)) is not None and (v := value(r)) is not None
    ]
    if len(found) < 2:
        return None
    return min(found, key=lambda p: p[1]), max(found, key=lambda p: p[1])


def _agree(pairs: Sequence[tuple[str, int, int]]) -> str:
    """ "same" when every (what, paper's exit, our exit) agrees, else which of them differ."""
    differ = [what for what, paper, ours in pairs if paper != ours]
    if not differ:
        return "same"
    return " and ".join(differ) + " differ" if len(differ) > 1 else f"{differ[0]} differs"


def _verdict(claims: dict[str, Claim], statement: str) -> str:
    c = claims.get(statement)
    return "–" if c is None else c.verdict


def _summary(claims: dict[str, Claim], statement: str) -> str:
    c = claims.get(statement)
    if c is None or not c.comparisons:
        return "no pair of points to compare"
    return f"{c.count(stats.SUPPORTED)} of {len(c.comparisons)} {c.unit} supported"


def fidelity_rows(scn: Scenario, t: float, claims: Sequence[Claim]) -> list[FidelityRow]:
    """The paper's claims and orderings beside ours; ``claims`` as judged at ``t``."""
    by = {c.statement: c for c in claims}

    def sem(e: int) -> ResultsFile | None:
        return scn.get("sem", e, t)

    def mem(e: int) -> ResultsFile | None:
        return scn.get("mem", e, t)

    rows = [
        FidelityRow(
            "Later exit points exit more samples locally",
            "§4.2",
            f"SEM-3: {SEM3_LOCAL} of {_thousands(PAPER_TEST_SAMPLES)} local "
            f"({100 * SEM3_LOCAL / PAPER_TEST_SAMPLES:.1f} %); SEM-8: {SEM8_CLOUD_EXITS} to the cloud "
            f"({100 * (PAPER_TEST_SAMPLES - SEM8_CLOUD_EXITS) / PAPER_TEST_SAMPLES:.1f} % local)",
            f"SEM-3: {_text(_local_share(sem(3)), '.1f')} local; SEM-8: {_text(_local_share(sem(8)), '.1f')} local",
            _verdict(by, "SEM: later exit points exit more samples locally"),
        ),
        FidelityRow(
            "Edge accuracy rises with later exit points",
            "§4.2",
            f"SEM-1 {SEM_EDGE_ACCURACY[1]:.2f} % → SEM-8 {SEM_EDGE_ACCURACY[8]:.2f} %",
            f"SEM-1 {_text(_pct(sem(1), 'edge_accuracy'))} → SEM-8 {_text(_pct(sem(8), 'edge_accuracy'))}",
            _verdict(by, "SEM: edge accuracy rises with later exit points"),
        ),
        FidelityRow(
            "Cloud accuracy falls with later exit points",
            "§4.2",
            ", ".join(f"SEM-{e} {v:.2f} %" for e, v in SEM_CLOUD_ACCURACY.items()),
            ", ".join(f"SEM-{e} {_text(_pct(sem(e), 'cloud_accuracy'))}" for e in SEM_CLOUD_ACCURACY),
            _verdict(by, "SEM: cloud accuracy falls with later exit points"),
        ),
    ]
    for kind, quoted, section, name in (
        ("sem", SEM_OVERALL_ACCURACY, "§4.2", lambda e: f"SEM-{e}"),
        ("mem", MEM_OVERALL_ACCURACY, "§4.3", lambda e: f"MEM exit {e}"),
    ):
        (pw, vw), (pb, vb) = quoted["worst"], quoted["best"]
        found = _extremes(scn, kind, t, lambda r: _pct(r, "overall_accuracy"))
        rows.append(
            FidelityRow(
                f"Worst and best overall accuracy ({kind.upper()})",
                section,
                f"worst {name(pw)} {vw:.2f} %, best {name(pb)} {vb:.2f} %",
                "–"
                if found is None
                else f"worst {name(found[0][0])} {found[0][1]:.2f} %, best {name(found[1][0])} {found[1][1]:.2f} %",
                "–" if found is None else _agree((("worst", pw, found[0][0]), ("best", pb, found[1][0]))),
            )
        )
    pb8 = SEM_OVERALL_ACCURACY["best"][1]
    pm8 = MEM_OVERALL_ACCURACY["best"][1]
    rows += [
        FidelityRow(
            "SEM is more accurate (overall) than MEM at the same exit point",
            "§4.3",
            f"exit 8: SEM-8 {pb8:.2f} % vs MEM {pm8:.2f} %",
            f"exit 8: SEM-8 {_text(_pct(sem(8), 'overall_accuracy'))} vs MEM "
            f"{_text(_pct(mem(8), 'overall_accuracy'))}; "
            + _summary(by, "SEM is more accurate (overall) than MEM at every exit point"),
            _verdict(by, "SEM is more accurate (overall) than MEM at every exit point"),
        ),
        FidelityRow(
            "SEM exits more samples locally than MEM at the same exit point",
            "§4.3",
            "stated for every exit point (Fig. 6A); no counts in the text",
            _summary(by, "SEM exits more samples locally than MEM at every exit point"),
            _verdict(by, "SEM exits more samples locally than MEM at every exit point"),
        ),
    ]
    fastest = _extremes(scn, "sem", t, lambda r: r.metric("overall_latency_ms"))
    rows.append(
        FidelityRow(
            "Shortest and longest overall latency (SEM)",
            "§4.2",
            f"shortest SEM-{SEM_FASTEST} ({SEM_FASTEST_MS} ms), longest SEM-{SEM_SLOWEST}",
            "–"
            if fastest is None
            else f"shortest SEM-{fastest[0][0]}, longest SEM-{fastest[1][0]} (medians; an ordering, not times)",
            "–"
            if fastest is None
            else _agree((("shortest", SEM_FASTEST, fastest[0][0]), ("longest", SEM_SLOWEST, fastest[1][0]))),
        )
    )
    fastest = _extremes(scn, "mem", t, lambda r: r.metric("overall_latency_ms"))
    rows.append(
        FidelityRow(
            "Shortest overall latency (MEM)",
            "§4.3",
            f"exit {MEM_FASTEST} ({MEM_FASTEST_MS} ms; exit 5: {MEM_AT_5_MS} ms)",
            "–" if fastest is None else f"exit {fastest[0][0]} (median; an ordering, not times)",
            "–" if fastest is None else _agree((("shortest", MEM_FASTEST, fastest[0][0]),)),
        )
    )
    s5, m5 = sem(5), mem(5)
    ratio = (
        None
        if s5 is None or m5 is None
        else compare(s5.series("overall_latency_ms"), m5.series("overall_latency_ms"), "ratio")
    )
    rows.append(
        FidelityRow(
            "SEM is faster (overall latency) than MEM at the same exit point",
            "§4.3",
            f"exit 5: SEM-5 {SEM_FASTEST_MS} ms vs MEM {MEM_AT_5_MS} ms, ratio {SEM_FASTEST_MS / MEM_AT_5_MS:.3f}",
            ("exit 5: –" if ratio is None else f"exit 5: ratio {ratio.text('.3f')}")
            + "; "
            + _summary(by, "SEM is faster (overall latency) than MEM at every exit point"),
            _verdict(by, "SEM is faster (overall latency) than MEM at every exit point"),
        )
    )
    for statement, paper in (
        ("A lower T exits fewer samples locally", "more local exits at T = 0.5 than at 0.1 (Fig. 7A)"),
        ("A lower T raises edge accuracy", "edge, cloud and overall accuracy rise as T falls (Fig. 7B)"),
        ("A lower T raises cloud accuracy", "edge, cloud and overall accuracy rise as T falls (Fig. 7B)"),
        ("A lower T raises overall accuracy", "edge, cloud and overall accuracy rise as T falls (Fig. 7B)"),
        (
            "A lower T raises overall latency",
            "overall latency rises as T falls (Fig. 7C); MEM alike (Fig. 8)",
        ),
    ):
        rows.append(FidelityRow(statement, "§4.4", paper, _summary(by, statement), _verdict(by, statement)))
    return rows


def fidelity_table(scn: Scenario, t: float, claims: Sequence[Claim]) -> Table:
    """The paper's numbers (from its text) beside ours, with our verdict or whether the ordering agrees."""
    rows: list[tuple[Cell, ...]] = [
        (r.claim, r.section, r.paper, r.ours, r.agreement) for r in fidelity_rows(scn, t, claims)
    ]
    return Table(
        f"The paper ({PAPER_DATASET}) beside these runs ({scn.caption(t)})",
        (
            "claim or ordering",
            "paper",
            f"paper ({PAPER_DATASET}, T = {PAPER_THRESHOLD:g})",
            "ours",
            "ours vs paper",
        ),
        tuple(rows),
        ("", "", "", "", ""),
        "Paper: numbers as its text gives them (none are read off its figures). Ours: medians across runs; "
        "the last column is our verdict on the claim (see the claims table) or whether the ordering is the "
        "same. Latency orderings between neighbouring exits are often within the noise (see the A/A control).",
    )
