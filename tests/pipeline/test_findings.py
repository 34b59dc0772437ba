"""Findings are decided by the spread over seeds: a paired 95% t-interval of the difference."""

import math

import pytest

from knockoff_lab.pipeline.findings import FINDINGS, compare, paired_interval
from knockoff_lab.pipeline.report import read_results, write_results

LABEL_LOWER = compare("6", "label", "6", "probs", "acc_surrogate", lower=True)


def results(label: list[float], probs: list[float]) -> dict:
    return {
        ("6", "v", "label", "acc_surrogate"): label,
        ("6", "v", "probs", "acc_surrogate"): probs,
    }


def test_paired_interval_is_students_t_of_the_differences():
    centre, half, n = paired_interval([0.5, 0.6, 0.7], [0.3, 0.35, 0.45])
    # differences 0.2, 0.25, 0.25: sd 0.02887, t(0.975, 2) = 4.3027
    assert (centre, n) == (pytest.approx(0.23333, abs=1e-5), 3)
    assert half == pytest.approx(4.3027 * 0.028868 / math.sqrt(3), rel=1e-3)


@pytest.mark.parametrize(
    "label, probs, verdict",
    [
        ([0.30, 0.35, 0.45], [0.50, 0.60, 0.70], "reproduced"),
        ([0.50, 0.60, 0.70], [0.30, 0.35, 0.45], "NOT reproduced"),
        ([0.40, 0.30, 0.52], [0.35, 0.40, 0.50], "inconclusive"),  # differs by seed, both ways
        ([0.20], [0.90], "inconclusive"),
    ],  # one seed: no spread to judge by
)
def test_a_comparison_is_decided_by_the_spread_over_seeds(label, probs, verdict):
    assert LABEL_LOWER(results(label, probs))[0] == verdict


def test_the_pairing_is_by_seed():
    """The same values, unpaired, would overlap; paired by seed the difference is consistent."""
    label, probs = [0.30, 0.50, 0.70], [0.32, 0.52, 0.72]
    assert LABEL_LOWER(results(label, probs))[0] == "reproduced"


def test_every_finding_is_unmeasured_on_empty_results():
    assert all(finding.check({}) is None for finding in FINDINGS)


def test_results_csv_keeps_every_seed_and_adds_aggregates(tmp_path):
    measured = {
        ("6", "v", "label", "acc_surrogate"): [0.2, 0.4, 0.3],
        ("3", "v", "ours", "tpr"): [0.9],
    }
    write_results(tmp_path / "r.csv", measured)
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0] == "table,victim,setting,metric,seed,value"
    assert "6,v,label,acc_surrogate,mean,0.3000" in lines
    assert (
        "6,v,label,acc_surrogate,min,0.2000" in lines
        and "6,v,label,acc_surrogate,max,0.4000" in lines
    )
    assert not [line for line in lines if line.startswith("3,") and ",mean," in line]
    assert read_results(tmp_path / "r.csv") == measured


def test_a_claim_compares_settings_on_the_same_dataset():
    """GTSRB's narrow pool against GTSRB's natural one, not against the first victim's (a
    paper-scale report has five victims in each table)."""
    narrow_lower = next(f for f in FINDINGS if f.section == "5.1.3").check
    results = {
        ("5.1.3", "caltech256-rn34", "natural", "acc_surrogate"): [0.90, 0.91, 0.92],
        ("5.1.3", "gtsrb-rn34", "natural", "acc_surrogate"): [0.20, 0.21, 0.19],
        ("5.1.3", "gtsrb-rn34", "narrow", "acc_surrogate"): [0.30, 0.32, 0.31],
    }
    verdict, shown = narrow_lower(results)
    assert verdict == "NOT reproduced" and shown.startswith("gtsrb: ")
