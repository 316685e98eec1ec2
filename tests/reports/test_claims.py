"""The paper's claims judged from run-level intervals, on synthetic blocked studies with known effects."""

from __future__ import annotations

import pytest

from reports import claims
from reports.stats import CONTRADICTED, INCONCLUSIVE, NOT_TESTED, SUPPORTED
from tests.reports.conftest import Study, verdicts

FASTER = "SEM is faster (overall latency) than MEM at every exit point"


def _claim(study: Study, statement: str, t: float = 0.3) -> claims.Claim:
    (claim,) = [c for c in claims.evaluate_claims(study.scenario(), t) if c.statement == statement]
    return claim


@pytest.mark.parametrize("seed", range(8))
def test_an_effect_in_every_block_is_supported(seed: int) -> None:
    # SEM 20 % faster in every block; blocks differ by a load factor of about 1.5x (sigma 0.4), runs
    # by 3 %: pooled, the load swamps the effect; paired by block, it cancels.
    claim = _claim(Study(sem_speed=0.8, seed=seed), FASTER)
    assert claim.verdict == SUPPORTED
    assert claim.evidence.startswith("3 supported of 3 exit points. SEM/MEM: exit 1 0.")
    for c in claim.comparisons:
        assert c.paired and c.estimate is not None and c.estimate.n == 6
        assert c.estimate.value == pytest.approx(0.8, abs=0.05)


def test_no_effect_is_inconclusive_and_never_supported() -> None:
    one_exit = [_claim(Study(exits=(3,), seed=seed), FASTER).verdict for seed in range(200)]
    # A comparison with no effect behind it lands on one side by chance about 3 % of the time each way.
    assert one_exit.count(SUPPORTED) / len(one_exit) <= 0.06
    assert one_exit.count(INCONCLUSIVE) / len(one_exit) >= 0.85
    # "At every exit point" needs each of three to come out on the claimed side: chance does not do that.
    three_exits = [_claim(Study(seed=seed), FASTER).verdict for seed in range(40)]
    assert SUPPORTED not in three_exits
    assert three_exits.count(INCONCLUSIVE) >= 30


def test_one_loaded_block_does_not_make_a_difference() -> None:
    # Other work slowed SEM alone 4x in block 2: the per-block median ignores it; a pooled test would not.
    claim = _claim(Study(exits=(3,), sem_burst={2: 4.0}, seed=1), FASTER)
    (c,) = claim.comparisons
    assert c.estimate is not None and c.estimate.value == pytest.approx(1.0, abs=0.05)
    assert claim.verdict == INCONCLUSIVE


def test_too_few_blocks_are_not_tested() -> None:
    claim = _claim(Study(blocks=4, sem_speed=0.5), FASTER)
    assert claim.verdict == NOT_TESTED
    assert "3 not tested of 3 exit points" in claim.evidence
    assert "(not tested)" in claim.evidence  # the estimates are still shown


def test_files_without_blocks_are_compared_unpaired() -> None:
    quiet = Study(sem_speed=0.8, with_blocks=False, block_load=0.02)
    claim = _claim(quiet, FASTER)
    assert claim.verdict == SUPPORTED
    assert not any(c.paired for c in claim.comparisons)
    assert claim.evidence.endswith("(runs without blocks: compared unpaired)")
    assert "unpaired runs" in (claim.comparisons[0].estimate.method if claim.comparisons[0].estimate else "")
    # Under the same heavy load shared within blocks, blocks are what make the effect visible.
    loaded = {"sem_speed": 0.8, "block_load": 0.4, "seed": 3}
    assert _claim(Study(**loaded), FASTER).verdict == SUPPORTED  # type: ignore[arg-type]
    assert _claim(Study(with_blocks=False, **loaded), FASTER).verdict == INCONCLUSIVE  # type: ignore[arg-type]


def test_edge_accuracy_with_later_exits() -> None:
    assert _claim(Study(), "SEM: edge accuracy rises with later exit points").verdict == SUPPORTED
    dip = Study(edge_accuracy={1: 0.80, 2: 0.90, 3: 0.85})
    claim = _claim(dip, "MEM: edge accuracy rises with later exit points")
    assert claim.verdict == CONTRADICTED
    assert "1 supported, 1 contradicted of 2 exit steps" in claim.evidence
    assert "2→3 -5.00 [-5.00, -5.00] ✗" in claim.evidence
    got = verdicts(claims.evaluate_claims(Study().scenario(), 0.3))
    assert got["SEM: cloud accuracy falls with later exit points"] == SUPPORTED
    assert got["SEM: later exit points exit more samples locally"] == SUPPORTED


def test_claims_against_the_threshold() -> None:
    study = Study(thresholds=(0.1, 0.3, 0.5), sem_speed=0.9)
    got = verdicts(claims.evaluate_claims(study.scenario(), 0.3))
    assert got["A lower T exits fewer samples locally"] == SUPPORTED
    assert got["A lower T raises edge accuracy"] == SUPPORTED
    assert got["A lower T raises cloud accuracy"] == SUPPORTED
    assert got["A lower T raises overall latency"] == SUPPORTED  # 1.45 -> 1.35 -> 1.25 x, every block
    rising = Study(thresholds=(0.1, 0.3, 0.5), edge_t_slope=0.1)
    claim = _claim(rising, "A lower T raises edge accuracy")
    assert claim.verdict == CONTRADICTED
    assert claim.evidence.startswith("12 contradicted of 12 threshold steps. lower T − higher T")


def test_every_claim_of_the_paper_is_there() -> None:
    got = verdicts(claims.evaluate_claims(Study().scenario(), 0.3))
    assert len(got) == 15
    assert set(got.values()) <= {SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_TESTED}
    assert got["A lower T raises overall accuracy"] == NOT_TESTED  # one threshold: nothing to compare


@pytest.mark.parametrize(
    ("given", "want"),
    [
        ([SUPPORTED, SUPPORTED], SUPPORTED),
        ([SUPPORTED, INCONCLUSIVE], INCONCLUSIVE),
        ([SUPPORTED, CONTRADICTED, INCONCLUSIVE], CONTRADICTED),
        ([SUPPORTED, NOT_TESTED], INCONCLUSIVE),
        ([NOT_TESTED, NOT_TESTED], NOT_TESTED),
        ([], NOT_TESTED),
    ],
)
def test_a_claim_needs_every_comparison(given: list[str], want: str) -> None:
    assert claims.combine(given) == want


def test_sem_vs_mem_table_has_the_paired_ratio() -> None:
    scn = Study(sem_speed=0.8, seed=2).scenario()
    table = claims.sem_vs_mem_table(scn, 0.3)
    assert table.column("exit") == [1, 2, 3]
    assert table.column("pairing") == ["6 blocks"] * 3
    assert table.column("SEM faster?") == [SUPPORTED] * 3
    for ratio, interval in zip(
        table.column("lat. ratio SEM/MEM"), table.column("95 % interval"), strict=True
    ):
        low, high = (float(x) for x in str(interval).strip("[]").split(", "))
        assert isinstance(ratio, float) and low <= ratio <= high < 1.0
    assert "batch latency p" not in " ".join(table.headers)  # no per-batch test between configurations
