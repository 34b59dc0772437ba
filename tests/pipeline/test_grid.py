"""Grids of a reproduce preset (pipeline/grid.py) and stages made of several YAMLs: a stage's
merged config is what LightningCLI makes of the same files, a grid expands into its cells, its
table and comparisons come from results.csv, and a tiny attack x defence grid runs end to end."""

import contextlib
import csv
import io

import pytest
import yaml

from knockoff_lab.core.errors import ConfigError
from knockoff_lab.pipeline.cli import cli_main
from knockoff_lab.pipeline.grid import Grid, Multiplier, Plot, Reference, Variant
from knockoff_lab.pipeline.report import grid_table, write_tables
from knockoff_lab.pipeline.reproduce import reproduce_main
from knockoff_lab.pipeline.stages import Stage, read_yaml
from tests.conftest import CONFIGS
from tests.pipeline.test_reproduce import TINY

BASE = str(CONFIGS / "surrogate/digits_natural_probs.yaml")


def printed(args: list[str]) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        cli_main(["fit", *args, "--print_config"])
    return yaml.safe_load(out.getvalue())


@pytest.mark.parametrize(
    "overlay",
    [
        "attacks/knockoff_adaptive.yaml",
        "defences/detector.yaml",
        "callbacks/defence_report.yaml",
        "attacks/in_distribution.yaml",
    ],
)
def test_a_stage_of_several_yamls_is_what_lightningcli_makes_of_them(tmp_path, overlay):
    """Merged by the stage (mappings key by key, lists replaced, another class replaced whole)
    as `fit --config base --config overlay` merges them: the same full config either way."""
    merged = tmp_path / "merged.yaml"
    stage = Stage(name="s", config=[BASE, str(CONFIGS / overlay)])
    merged.write_text(yaml.safe_dump(read_yaml(stage)))
    assert printed(["--config", str(merged)]) == printed(
        ["--config", BASE, "--config", str(CONFIGS / overlay)]
    )


def grid(**changes) -> Grid:
    fields = dict(
        name="g",
        title="G",
        victim="v",
        config="base.yaml",
        axes={
            "attack": {"random": Variant(), "jbda": Variant(config=["jbda.yaml"])},
            "defence": {
                "none": Variant(),
                "top1": Variant(
                    config=["top1.yaml"], set={"budget": 7}, inputs={"det": "detector"}
                ),
            },
        },
        metrics={"acc": "test/acc", "l1": "benign/l1_change"},
        set={"budget": 5, "epochs": 3},
        inputs={"victim": "victim"},
        reference=Reference(axis="defence", variant="none", metrics=["acc"]),
    )
    return Grid(**{**fields, **changes})


def test_a_grid_expands_into_one_stage_per_cell():
    stages = {stage.name: stage for stage in grid().stages()}
    assert list(stages) == ["g-random-none", "g-random-top1", "g-jbda-none", "g-jbda-top1"]
    cell = stages["g-jbda-top1"]
    assert cell.config == ["base.yaml", "jbda.yaml", "top1.yaml"]  # overlays in axis order
    assert cell.set == {"budget": 7, "epochs": 3}  # a variant's setting over the grid's
    assert cell.inputs == {"victim": "victim", "det": "detector"}
    assert [(r.table, r.victim, r.setting) for r in cell.rows] == [("g", "v", "jbda/top1")]
    assert stages["g-random-none"].config == ["base.yaml"] and stages["g-random-none"].set == {
        "budget": 5,
        "epochs": 3,
    }


def test_the_grid_table_and_its_paired_comparisons_with_the_reference():
    g = grid()
    results = {
        ("g", "v", "random/none", "acc"): [0.80, 0.82, 0.81],
        ("g", "v", "random/top1", "acc"): [0.60, 0.63, 0.61],  # lower on every seed
        ("g", "v", "jbda/none", "acc"): [0.50, 0.60, 0.40],
        ("g", "v", "jbda/top1", "acc"): [0.55, 0.50, 0.45],  # within the spread
        ("g", "v", "random/top1", "l1"): [0.04],
    }
    table = grid_table(results, g)
    assert table[0] == "| attack | defence | acc | l1 |"
    assert "| random | top1 | 0.613 [0.600, 0.630] | 0.040 (1 of 3) |" in table  # seeds it has
    lines = g.comparisons(results)
    assert len(lines) == 2
    assert lines[0].startswith("- random/top1 vs random/none: acc -0.197")
    assert lines[0].endswith("**lower**")
    assert lines[1].startswith("- jbda/top1 vs jbda/none") and lines[1].endswith("**inconclusive**")
    higher = {**results, ("g", "v", "random/top1", "acc"): [0.9, 0.93, 0.91]}
    assert g.comparisons(higher)[0].endswith("**higher**")


def test_a_stage_row_in_a_grids_table_joins_it_and_other_tables_are_shown_too(tmp_path):
    """A stage whose `rows` name the grid's table with one name per axis adds its row after
    the cells (a data-free thief beside the grid's); a table no grid or paper table names is
    shown as measured (each metric's mean [min, max] over its seeds or models)."""
    results = {
        ("g", "v", "random/none", "acc"): [0.8],
        ("g", "v", "dfme/none", "acc"): [0.5, 0.7],
        ("g", "v", "odd", "acc"): [0.1],  # not one name per axis: not a row of the grid
        ("controls", "v", "independent", "accused"): [0.0, 1.0, 0.0, 0.0],
    }
    table = grid_table(results, grid())
    assert table[-1] == "| dfme | none | 0.600 [0.500, 0.700] | n/a |" and len(table) == 4
    write_tables(tmp_path / "tables.md", results, False, grids=[grid()])
    text = (tmp_path / "tables.md").read_text()
    assert "## controls\n\n| victim | setting | accused |" in text
    assert "| v | independent | 0.250 [0.000, 1.000] |" in text


def test_a_variant_is_also_compared_with_its_own_reference():
    """`also`: JBDA is compared with random sampling, as every strategy, and with random
    sampling in JBDA's own rounds (the same schedule: only the choice of queries differs)."""
    attacks = {"random": Variant(), "random_r6": Variant(), "jbda": Variant()}
    reference = Reference("attack", "random", ["acc"], also={"jbda": "random_r6"})
    g = grid(axes={"attack": attacks, "defence": {"none": Variant()}}, reference=reference)
    results = {("g", "v", f"{a}/none", "acc"): [0.5, 0.6, 0.7] for a in attacks}
    assert [line.split(":")[0] for line in g.comparisons(results)] == [
        "- random_r6/none vs random/none",
        "- jbda/none vs random/none",
        "- jbda/none vs random_r6/none",
    ]
    with pytest.raises(ConfigError, match="reference attack=dfal is no variant"):
        grid(
            axes={"attack": attacks},
            reference=Reference("attack", "random", ["acc"], {"jbda": "dfal"}),
        )


def test_a_grid_is_compared_with_each_of_several_references():
    """Against the naive attacker under the same defence, and against no defence for the same
    attacker: two questions, each paired across seeds."""
    both = [Reference("defence", "none", ["acc"]), Reference("attack", "random", ["acc"])]
    g = grid(reference=both)
    results = {("g", "v", "/".join(c), "acc"): [0.5, 0.6, 0.7] for c in g.cells()}
    assert [line.split(":")[0] for line in g.comparisons(results)] == [
        "- random/top1 vs random/none",
        "- jbda/top1 vs jbda/none",
        "- jbda/none vs random/none",
        "- jbda/top1 vs random/top1",
    ]
    with pytest.raises(ConfigError, match="reference attack=dfal is no variant"):
        grid(reference=[both[0], Reference("attack", "dfal", ["acc"])])


def test_the_error_multiplier_is_taken_seed_by_seed_against_the_reference_variant():
    g = grid(multiplier=Multiplier("defence", "none", "acc"))
    results = {
        ("g", "v", "random/none", "acc"): [0.9, 0.8, 0.5],
        ("g", "v", "random/top1", "acc"): [0.8, 0.6, 0.5],  # error x2, x2, x1
        ("g", "v", "jbda/none", "acc"): [0.5],
    }
    assert g.multipliers(results) == [
        "| attack | defence | error x |",
        "|---|---|---|",
        "| random | top1 | x2.00 [1.00, 2.00] |",
    ]
    assert grid().multipliers(results) == []


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"name": "a-b"}, "name 'a-b' must be"),
        ({"plot": Plot(x="acc", y="acc", series="budget")}, "plot names 'budget', neither an axis"),
        ({"plot": Plot(x="attack", y="fidelity", series="defence")}, "plot.y 'fidelity' is not"),
        (
            {"reference": Reference("defence", "mad", ["acc"])},
            "reference defence=mad is no variant",
        ),
        ({"reference": Reference("defence", "none", ["x"])}, r"reference metrics \['x'\]"),
        ({"axes": {"attack": {}}}, "axes must name at least one variant"),
        ({"multiplier": Multiplier("defence", "mad", "acc")}, "multiplier defence=mad is no"),
        ({"multiplier": Multiplier("defence", "none", "x")}, "multiplier metric 'x' is not"),
    ],
)
def test_a_bad_grid_is_refused_when_read(changes, message):
    with pytest.raises(ConfigError, match=message):
        grid(**changes)


def test_a_tiny_attack_by_defence_grid_runs_end_to_end(tmp_path):
    """Two defences against random sampling: the report's grid table, figure and comparison;
    the top-1 API changes benign answers (L1 > 0), the undefended one does not."""
    preset = {
        "output_dir": str(tmp_path / "out"),
        "set": TINY,
        "stages": [{"name": "victim", "config": str(CONFIGS / "victim/digits_cnn.yaml")}],
        "grids": [
            {
                "name": "m",
                "title": "tiny matrix",
                "victim": "digits-cnn",
                "config": [BASE, str(CONFIGS / "callbacks/defence_report.yaml")],
                "inputs": {"data.init_args.api.init_args.victim": "victim"},
                "set": {"data.init_args.budget": 200, "data.init_args.pool.init_args.size": 300},
                "axes": {
                    "attack": {"random": {}},
                    "defence": {
                        "none": {},
                        "top1": {"config": [str(CONFIGS / "defences/top1.yaml")]},
                    },
                },
                "metrics": {"acc_surrogate": "test/acc", "benign_l1_change": "benign/l1_change"},
                "plot": {"x": "benign_l1_change", "y": "acc_surrogate", "series": "attack"},
                "reference": {"axis": "defence", "variant": "none", "metrics": ["acc_surrogate"]},
            }
        ],
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(preset, sort_keys=False))
    out = reproduce_main(["--config", str(path)])
    with open(out / "results.csv", newline="") as f:
        values = {
            (r["setting"], r["metric"]): float(r["value"])
            for r in csv.DictReader(f)
            if r["table"] == "m"
        }
    assert set(values) == {
        (s, m)
        for s in ("random/none", "random/top1")
        for m in ("acc_surrogate", "benign_l1_change")
    }
    assert values["random/none", "benign_l1_change"] == 0
    assert values["random/top1", "benign_l1_change"] > 0.01
    tables = (out / "tables.md").read_text()
    assert "## tiny matrix" in tables and "| attack | defence | acc_surrogate |" in tables
    assert "- random/top1 vs random/none: acc_surrogate" in tables
    assert "![acc_surrogate vs benign_l1_change](figures/grid_m.png)" in tables
    assert (out / "figures/grid_m.png").stat().st_size > 0
    assert not list((out / "figures").glob("m-*"))
    # a cell draws no figure and scores no victim test set each epoch: the report shows neither
    for cell in (out / "stages").glob("m-*"):
        assert (cell / "transfer_histogram.csv").exists() and not list(cell.glob("*.png"))
        assert "analysis/test_acc" not in (cell / "metrics.csv").read_text()
