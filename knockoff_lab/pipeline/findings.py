"""The paper's findings, checked on a run's results, decided by the spread over seeds.

A comparison ("label-only answers degrade the surrogate") is a paired one: seed s of one setting
against seed s of the other (the same query order and initialisation), and the verdict comes from
the 95% confidence interval of the mean paired difference (Student's t): **reproduced** when the
whole interval lies on the paper's side, **NOT reproduced** when it lies on the other side, and
**inconclusive** when it contains no difference, or when there is one seed (no spread to judge by).
A threshold claim about one quantity (the detector's TPR) holds or fails on each seed; it is
inconclusive when the seeds disagree.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

from scipy.stats import t as student_t

# (table, victim, setting, metric) -> the value of each seed, in seed order
Results = dict[tuple[str, str, str, str], list[float]]
Verdict = tuple[str, str]  # ("reproduced" | "NOT reproduced" | "inconclusive", evidence)


@dataclass
class Finding:
    claim: str
    section: str
    check: Callable[[Results], Verdict | None]  # None: not measured in this run


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def paired_interval(a: list[float], b: list[float]) -> tuple[float, float, int]:
    """(mean of a_s - b_s, half-width of its 95% t-interval, seeds); half-width inf for 1 seed."""
    differences = [x - y for x, y in zip(a, b, strict=False)]
    n = len(differences)
    if n < 2:
        return mean(differences), math.inf, n
    centre = mean(differences)
    sd = math.sqrt(sum((d - centre) ** 2 for d in differences) / (n - 1))
    return centre, float(student_t.ppf(0.975, n - 1)) * sd / math.sqrt(n), n


def decide(centre: float, half: float, n: int, margin: float = 0.0) -> str:
    """The verdict for a claimed difference `> margin` with interval centre +- half."""
    if n < 2:
        return "inconclusive"
    if centre - half > margin:
        return "reproduced"
    if centre + half < margin:
        return "NOT reproduced"
    return "inconclusive"


def _victims(results: Results) -> list[str]:
    """The victims of `results`, in the order they first appear."""
    return list(dict.fromkeys(victim for _, victim, _, _ in results))


def _dataset(victim: str) -> str:
    """A victim's dataset: victims are named `<dataset>-<arch>` (`gtsrb-rn34`, `gtsrb-5l`)."""
    return victim.rsplit("-", 1)[0]


def _pair(results: Results, a: tuple[str, str], b: tuple[str, str], metric: str):
    """(dataset, a's values, b's values) of the first dataset measured in both (table, setting)
    cells: a claim compares settings on the same task (Table 5 GTSRB's 5L victim with its RN34),
    never one dataset's narrow pool with another's natural one. None if no dataset has both."""
    cells: dict[tuple[tuple[str, str], str], list[float]] = {}
    for (table, victim, setting, name), values in results.items():
        if name == metric:
            cells.setdefault(((table, setting), _dataset(victim)), values)
    for dataset in dict.fromkeys(_dataset(victim) for victim in _victims(results)):
        if (values_a := cells.get((a, dataset))) and (values_b := cells.get((b, dataset))):
            return dataset, values_a, values_b
    return None


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{mean(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def _evidence(centre: float, half: float, n: int) -> str:
    if n < 2:
        return "1 seed: no spread to judge by"
    return f"paired difference {centre:+.3f} +- {half:.3f} (95% CI, {n} seeds)"


def compare(table_a, set_a, table_b, set_b, metric, lower: bool):
    """The claim that `metric` of set_a is lower (or higher) than that of set_b."""

    def check(results: Results) -> Verdict | None:
        if (pair := _pair(results, (table_a, set_a), (table_b, set_b), metric)) is None:
            return None
        dataset, a, b = pair
        centre, half, n = paired_interval(b, a) if lower else paired_interval(a, b)
        shown = f"{dataset}: {metric} {set_a} {_spread(a)} vs {set_b} {_spread(b)}"
        return decide(centre, half, n), f"{shown}; {_evidence(centre, half, n)}"

    return check


def every_seed(holds: list[bool]) -> str:
    if all(holds):
        return "reproduced"
    return "NOT reproduced" if not any(holds) else "inconclusive"


def _batch_size_spread(results: Results) -> Verdict | None:
    """Against the first victim measured at two batch sizes or more."""
    for victim in _victims(results):
        accs = {
            s: v
            for (t, who, s, m), v in results.items()
            if (t, who, m) == ("7", victim, "acc_surrogate")
        }
        if len(accs) >= 2:
            break
    else:
        return None
    best = max(accs, key=lambda s: mean(accs[s]))
    worst = min(accs, key=lambda s: mean(accs[s]))
    centre, half, n = paired_interval(accs[best], accs[worst])
    sizes = ", ".join(f"{s} {_spread(v)}" for s, v in accs.items())
    shown = f"{victim}: acc by batch size {sizes}"
    return decide(centre, half, n, margin=0.02), f"{shown}; {best} - {worst}: " + _evidence(
        centre, half, n
    )


def _early_best(results: Results) -> Verdict | None:
    """Of the first 5.2.1 run (with early stopping, or the paper's 200 epochs)."""
    runs = [
        (best, last)
        for (table, victim, setting, metric), best in results.items()
        if (table, metric) == ("5.2.1", "best_test_epoch")
        and (last := results.get((table, victim, setting, "epochs_run")))
    ]
    if not runs:
        return None
    best, last = runs[0]
    holds = [b < e - 1 for b, e in zip(best, last, strict=False)]
    pairs = ", ".join(f"{b:.0f} of {e:.0f}" for b, e in zip(best, last, strict=False))
    return every_seed(holds), f"best test epoch per seed: {pairs}"


def _detector_flags(results: Results) -> Verdict | None:
    for victim in _victims(results):
        tpr, tnr = (results.get(("4a", victim, "ours", metric)) for metric in ("tpr", "tnr"))
        if tpr and tnr:
            break
    else:
        return None
    holds = [p >= 0.9 and n >= 0.9 for p, n in zip(tpr, tnr, strict=False)]
    return every_seed(holds), f"TPR {_spread(tpr)}, TNR {_spread(tnr)}"


def _indist_evades(results: Results) -> Verdict | None:
    metric = "flagged_fraction"
    if (pair := _pair(results, ("4.1", "in_distribution"), ("4.1", "natural"), metric)) is None:
        return None
    _, flagged, ood = pair
    holds = [f < 0.2 <= o for f, o in zip(flagged, ood, strict=False)]
    return every_seed(holds), f"flagged {_spread(flagged)} in-dist vs {_spread(ood)} natural"


FINDINGS = [
    Finding(
        "Label-only answers degrade the surrogate",
        "Table 6",
        compare("6", "label", "6", "probs", "acc_surrogate", lower=True),
    ),
    Finding(
        "A victim of a different architecture is harder to steal",
        "Table 5",
        compare("5", "different_arch", "5", "same_arch", "recovery", lower=True),
    ),
    Finding(
        "Batch size changes surrogate accuracy noticeably (by more than 2 points)",
        "Table 7",
        _batch_size_spread,
    ),
    Finding(
        "A low-diversity query set degrades the attack",
        "5.1.3",
        compare("5.1.3", "narrow", "5.1.3", "natural", "acc_surrogate", lower=True),
    ),
    Finding(
        "Surrogates overfit: test accuracy peaks before training ends",
        "5.2.1, Figure 2",
        _early_best,
    ),
    Finding(
        "In-distribution queries give a better surrogate",
        "5.2.2",
        compare("5.2.2", "in_distribution", "5.2.2", "natural", "acc_surrogate", lower=False),
    ),
    Finding(
        "The detector flags Knockoff queries (TPR and TNR >= 90%)", "Tables 3-4", _detector_flags
    ),
    Finding("In-distribution queries evade the detector", "5.2.2", _indist_evades),
]


def findings_lines(results: Results) -> list[str]:
    lines = []
    for finding in FINDINGS:
        outcome = finding.check(results)
        if outcome is None:
            lines.append(f"- {finding.claim} ({finding.section}): not measured in this run")
        else:
            lines.append(f"- {finding.claim} ({finding.section}): **{outcome[0]}** ({outcome[1]})")
    return lines
