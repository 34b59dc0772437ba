"""The report of a `reproduce` run: results.csv, tables.md (with the paper's findings checked
against this run's numbers) and the figures.

Tables are rendered from results.csv alone, so a table always shows what was measured. Attack
tables (2, 5, 6, 7 and the 5.x sections) share one layout: a row per victim, Acc(F_V), then one
column per setting with Acc(F_A) and its recovery. Detection tables link one ROC figure each,
drawn from the per-image scores (`scores.csv`) their stages saved.

results.csv and tables.md are written atomically: a full disk leaves the previous report whole.
"""

import csv
import html
from collections.abc import Sequence
from pathlib import Path

from knockoff_lab.core.atomic import atomic_file
from knockoff_lab.evaluation.figures import Curves, plot_roc
from knockoff_lab.evaluation.ood_metrics import read_scores
from knockoff_lab.pipeline.findings import Results, findings_lines, mean
from knockoff_lab.pipeline.grid import Grid
from knockoff_lab.pipeline.loggers import wandb_offline

# A detector's or baseline's saved scores in a table: (table, victim, setting, OOD set, scores.csv)
Scored = tuple[str, str, str, str, Path]

TITLES = {
    "2": "Table 2: Knockoff against each victim (full probability vectors)",
    "5": "Table 5: same vs different victim architecture",
    "6": "Table 6: A_p (probabilities) vs A_c (predicted class only), and truncated answers",
    "7": "Table 7: surrogate accuracy by batch size",
    "5.1.3": "5.1.3: query-set diversity and class balancing",
    "5.2.1": "5.2.1 / Figure 2: early stopping on the transfer set's validation split",
    "5.2.2": "5.2.2: in-distribution adversary",
    "3": "Table 3: detectors, victim test set (TNR) vs attacker queries (TPR)",
    "4a": "Table 4a: detection, ImageNet stand-in as out-of-distribution test set",
    "4b": "Table 4b: detection, OpenImages stand-in as out-of-distribution test set",
    "4.1": "4.1: the detector as a filter in front of the API",
}

# The paper's own figures, shown beside ours when the preset is the paper's.
BASELINES = ("msp", "odin", "mahalanobis_multi")  # Table 4's Baseline / ODIN / Mahal. columns
PAPER: dict[tuple[str, str, str, str], float] = {
    **{
        ("2", v, "probs", "acc_victim"): a
        for v, a in [
            ("caltech256-rn34", 0.746),
            ("cubs200-rn34", 0.772),
            ("diabetic5-rn34", 0.711),
            ("gtsrb-rn34", 0.981),
            ("cifar10-rn34", 0.946),
        ]
    },
    **{
        ("2", v, "probs", "acc_surrogate"): a
        for v, a in [
            ("caltech256-rn34", 0.685),
            ("cubs200-rn34", 0.548),
            ("diabetic5-rn34", 0.593),
            ("gtsrb-rn34", 0.924),
            ("cifar10-rn34", 0.711),
        ]
    },
    **{
        ("6", v, "label", "acc_surrogate"): a
        for v, a in [
            ("caltech256-rn34", 0.419),
            ("cubs200-rn34", 0.180),
            ("diabetic5-rn34", 0.547),
            ("gtsrb-rn34", 0.916),
            ("cifar10-rn34", 0.536),
        ]
    },
    **{
        ("5", v, s, "acc_surrogate"): a
        for v, s, a in [
            ("gtsrb-rn34", "same_arch", 0.924),
            ("gtsrb-5l", "different_arch", 0.744),
            ("cifar10-rn34", "same_arch", 0.711),
            ("cifar10-9l", "different_arch", 0.596),
        ]
    },
    # Table 3 (CUBS): TPR / TNR of each detector
    **{
        ("3", "cubs200-rn34", s, m): v
        for s, tpr, tnr in [
            ("RN18", 0.86, 0.83),
            ("RN34", 0.94, 0.80),
            ("RN18*", 0.90, 0.83),
            ("RN34*", 0.95, 0.82),
            ("RN18*CV", 0.84, 0.84),
            ("RN34*CV", 0.93, 0.89),
            ("RN101*CV", 0.93, 0.93),
            ("RN152*CV", 0.93, 0.93),
        ]
        for m, v in (("tpr", tpr), ("tnr", tnr))
    },
    # Table 4: ours (TPR, TNR); MSP / ODIN / Mahalanobis at our TNR and at TNR 95%. The paper ran
    # Lee et al.'s public code, whose Mahalanobis combines layers: our mahalanobis_multi.
    **{
        (t, f"{v}-rn34", s, m): x
        for t, v, tpr, tnr, ours, at95 in [
            ("4a", "caltech256", 0.63, 0.56, (0.87, 0.88, 0.59), (0.13, 0.11, 0.05)),
            ("4a", "cubs200", 0.93, 0.93, (0.48, 0.54, 0.19), (0.39, 0.43, 0.12)),
            ("4a", "diabetic5", 0.99, 0.99, (0.01, 0.25, 0.98), (0.05, 0.49, 0.99)),
            ("4a", "gtsrb", 0.99, 0.99, (0.42, 0.56, 0.71), (0.77, 0.94, 0.89)),
            ("4a", "cifar10", 0.96, 0.96, (0.28, 0.54, 0.89), (0.33, 0.60, 0.91)),
            ("4b", "caltech256", 0.61, 0.59, (0.83, 0.83, 0.06), (0.11, 0.11, 0.06)),
            ("4b", "cubs200", 0.93, 0.93, (0.47, 0.50, 0.14), (0.37, 0.44, 0.14)),
            ("4b", "diabetic5", 0.99, 0.99, (0.01, 0.21, 0.99), (0.04, 0.44, 0.99)),
            ("4b", "gtsrb", 0.99, 0.99, (0.44, 0.64, 0.75), (0.76, 0.93, 0.87)),
            ("4b", "cifar10", 0.96, 0.96, (0.27, 0.56, 0.92), (0.33, 0.62, 0.95)),
        ]
        for s, m, x in [
            ("ours", "tpr", tpr),
            ("ours", "tnr", tnr),
            *[(b, "tpr_at_tnr_ours", o) for b, o in zip(BASELINES, ours, strict=True)],
            *[(b, "tpr_at_tnr95", a) for b, a in zip(BASELINES, at95, strict=True)],
        ]
    },
}


def write_results(path: Path, results: Results) -> None:
    """One row per seed (`seed` 0, 1, ...), then, for a metric measured on several seeds, its
    `mean`, `min` and `max` rows."""
    with atomic_file(path, "w", "report file") as f:
        writer = csv.writer(f)
        writer.writerow(["table", "victim", "setting", "metric", "seed", "value"])
        for key, values in results.items():
            for seed, value in enumerate(values):
                writer.writerow([*key, seed, f"{value:.4f}"])
            if len(values) > 1:
                for name, value in (
                    ("mean", mean(values)),
                    ("min", min(values)),
                    ("max", max(values)),
                ):
                    writer.writerow([*key, name, f"{value:.4f}"])


def read_results(path: Path) -> Results:
    """The per-seed values of a results.csv (aggregate rows are recomputed, not read)."""
    results: Results = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if r["seed"].isdigit():
                key = (r["table"], r["victim"], r["setting"], r["metric"])
                results.setdefault(key, []).append(float(r["value"]))
    return results


def _pct(values: list[float] | None) -> str:
    """A cell: the mean over seeds, and the range [min, max] when there are several."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}%"
    return f"{100 * mean(values):.1f}% [{100 * min(values):.1f}, {100 * max(values):.1f}]"


def _values(results: Results, table: str) -> tuple[list[str], list[str]]:
    victims = list(dict.fromkeys(k[1] for k in results if k[0] == table))
    settings = list(dict.fromkeys(k[2] for k in results if k[0] == table))
    if all(s.startswith("bs") and s[2:].isdigit() for s in settings):
        settings.sort(key=lambda s: int(s[2:]))  # Table 7: batch sizes in ascending order
    return victims, settings


def attack_table(results: Results, table: str, paper: bool) -> list[str]:
    victims, settings = _values(results, table)
    header = ["F_V", "Acc(F_V)", *(f"Acc(F_A) {s}" for s in settings)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for victim in victims:

        def get(setting: str, metric: str, victim: str = victim) -> list[float] | None:
            return results.get((table, victim, setting, metric))

        acc_v = next((get(s, "acc_victim") for s in settings if get(s, "acc_victim")), None)
        cells = [victim, _pct(acc_v[:1] if acc_v else None)]  # one victim for every seed
        for setting in settings:
            acc, rec = get(setting, "acc_surrogate"), get(setting, "recovery")
            cell = _pct(acc) + (f" ({mean(rec):.2f}x)" if rec else "")
            if paper and (ref := PAPER.get((table, victim, setting, "acc_surrogate"))):
                cell += f" [paper {_pct([ref])}]"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def detection_table(results: Results, table: str, paper: bool = False) -> list[str]:
    victims, settings = _values(results, table)
    metrics = list(dict.fromkeys(k[3] for k in results if k[0] == table))
    header = ["victim", "detector", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for victim in victims:
        for setting in settings:
            if any((table, victim, setting, m) in results for m in metrics):
                row = [_pct(results.get((table, victim, setting, m))) for m in metrics]
                if paper:
                    refs = [PAPER.get((table, victim, setting, m)) for m in metrics]
                    row = [
                        c + (f" [paper {_pct([r])}]" if r is not None else "")
                        for c, r in zip(row, refs, strict=True)
                    ]
                lines.append("| " + " | ".join([victim, setting, *row]) + " |")
    return lines


def _number(values: list[float] | None, of: int = 0) -> str:
    """A grid cell: the mean over seeds, and the range [min, max] when there are several; `of`:
    how many seeds the row has, shown when this metric was logged on fewer (e.g. dataset
    inference's `points_needed`, absent where no sample size sufficed)."""
    if not values:
        return "n/a"
    text = (
        f"{values[0]:.3f}"
        if len(values) == 1
        else (f"{mean(values):.3f} [{min(values):.3f}, {max(values):.3f}]")
    )
    return text + (f" ({len(values)} of {of})" if len(values) < of else "")


def _row(values: list[list[float] | None]) -> list[str]:
    """A row's cells, each metric logged on fewer of the row's seeds saying so."""
    seeds = max((len(v) for v in values if v), default=0)
    return [_number(v, seeds) for v in values]


def measurement_table(results: Results, table: str) -> list[str]:
    """A table a preset's stages name in their `rows` (none of the paper's, no grid's): a row
    per victim and setting, each metric's mean [min, max] over its seeds or models."""
    metrics = list(dict.fromkeys(k[3] for k in results if k[0] == table))
    header = ["victim", "setting", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for victim, setting in dict.fromkeys(k[1:3] for k in results if k[0] == table):
        values = [results.get((table, victim, setting, m)) for m in metrics]
        lines.append("| " + " | ".join([victim, setting, *_row(values)]) + " |")
    return lines


def grid_table(results: Results, grid: Grid) -> list[str]:
    """A row per measured cell: its variants, then each metric's mean [min, max] over seeds;
    then the rows a stage of the preset adds to the grid's table (`rows` with the grid's name
    and a setting of one `/`-separated name per axis)."""
    header = [*grid.axes, *grid.metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    cells = grid.cells()
    added = {tuple(k[2].split("/")) for k in results if k[0] == grid.name and k[1] == grid.victim}
    for cell in [*cells, *sorted(c for c in added - set(cells) if len(c) == len(grid.axes))]:
        values = [grid.get(results, cell, metric) for metric in grid.metrics]
        if any(values):
            lines.append("| " + " | ".join([*cell, *_row(values)]) + " |")
    return lines


def plot_table_rocs(scored: list[Scored], folder: Path) -> dict[str, Path]:
    """One ROC figure per detection table (`roc_table<table>.png`): a panel per victim and
    out-of-distribution set the table reports, a curve per detector or baseline in its rows, all
    scored on the same test images, so the curves compare directly."""
    panels: dict[str, dict[str, Curves]] = {}
    loaded: dict[Path, dict] = {}
    for table, victim, setting, ood_set, path in scored:
        if path not in loaded:
            loaded[path] = read_scores(path)
        scores = loaded[path]
        if "in" in scores and ood_set in scores:
            panel = panels.setdefault(table, {}).setdefault(f"{victim}: in vs {ood_set}", {})
            panel[setting] = (scores["in"], scores[ood_set])
    return {
        table: plot_roc(panel, folder / f"roc_table{table}.png", TITLES.get(table, table))
        for table, panel in panels.items()
    }


def write_tables(
    path: Path,
    results: Results,
    paper: bool,
    figures: dict[str, str] | None = None,
    grids: Sequence[Grid] = (),
) -> None:
    """tables.md; `figures` maps a table (or grid) to a figure (relative to `path`) shown under
    it; each grid gets its table, its figure and its comparisons with its reference."""
    lines = ["# Results", ""]
    for table, title in TITLES.items():
        if not any(k[0] == table for k in results):
            continue
        render = detection_table if table in {"3", "4a", "4b", "4.1"} else attack_table
        lines += [f"## {title}", "", *render(results, table, paper), ""]
        if figure := (figures or {}).get(table):
            lines += [f"![ROC curves, {title.split(':')[0]}]({figure})", ""]
    for grid in grids:
        if not any(k[0] == grid.name for k in results):
            continue
        lines += [f"## {grid.title}", "", *grid_table(results, grid), ""]
        if figure := (figures or {}).get(grid.name):
            lines += [f"![{grid.plot.y} vs {grid.plot.x}]({figure})", ""]
        if comparisons := grid.comparisons(results):
            refs = " and against ".join(f"{r.axis} = {r.variant}" for r in grid.references)
            lines += [
                f"Each cell against {refs}, paired across seeds "
                "(higher / lower only when the 95% interval excludes zero):",
                "",
                *comparisons,
                "",
            ]
        if multipliers := grid.multipliers(results):
            m = grid.multiplier
            lines += [
                f"Error multiplier: 1 - {m.metric} of each cell over that of its {m.axis} = "
                f"{m.variant} cell, seed by seed (median [min, max]):",
                "",
                *multipliers,
                "",
            ]
    known = {*TITLES, *(grid.name for grid in grids)}
    for table in dict.fromkeys(k[0] for k in results if k[0] not in known):
        lines += [f"## {table}", "", *measurement_table(results, table), ""]
    lines += [
        "## The paper's findings, checked on this run",
        "",
        "Decided by the spread over seeds (`pipeline/findings.py`): a paired 95% interval "
        "of the difference must lie wholly on one side.",
        "",
        *findings_lines(results),
    ]
    with atomic_file(path, "w", "report file") as f:
        f.write("\n".join(lines) + "\n")


def log_to_wandb(output: Path, project: str = "knockoff-lab") -> Path:
    """Log the report in `output` to one W&B run: results.csv as a table and as summary values,
    tables.md as text, every figure as an image, and the files as a `report` artifact. Offline
    (under `output/wandb`) unless logged in or `WANDB_MODE` says otherwise, as
    `AutoWandbLogger` decides, so a run without network never blocks. Returns the run's folder."""
    import wandb

    offline = wandb_offline()
    # an absolute dir: W&B's service process resolves paths in its own working directory
    # a run of its own even when a Lightning WandbLogger's run is still open in this process
    run = wandb.init(
        project=project,
        name=output.name,
        dir=str(output.resolve()),
        job_type="reproduce",
        mode="offline" if offline else None,
        reinit="create_new",
    )
    try:
        with open(output / "results.csv", newline="") as f:
            rows = list(csv.reader(f))
        text = (output / "tables.md").read_text()
        figures = sorted((output / "figures").glob("*.png"))
        run.log(
            {
                "results": wandb.Table(columns=rows[0], data=rows[1:]),
                "tables": wandb.Html(f"<pre>{html.escape(text)}</pre>"),
                **{f"figures/{png.stem}": wandb.Image(str(png)) for png in figures},
            }
        )
        run.summary.update({"/".join(row[:5]): float(row[5]) for row in rows[1:]})
        artifact = wandb.Artifact(f"report-{output.name}", type="report")
        for file in [output / "results.csv", output / "tables.md", *figures]:
            artifact.add_file(str(file), name=str(file.relative_to(output)))
        run.log_artifact(artifact)
    finally:
        run.finish()
    return Path(run.dir).parent
