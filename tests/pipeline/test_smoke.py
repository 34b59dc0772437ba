"""The paper preset's smoke run (`reproduce --smoke true --data_root DIR`) on tiny copies of the
official dataset layouts: every stage of `configs/reproduce/paper.yaml` runs for a step or two
on CPU with no download, and the whole report is written, so no stage of the paper-scale preset
can break unnoticed before anyone books a GPU."""

import csv
from pathlib import Path

import pytest

from knockoff_lab.core.errors import ConfigError
from knockoff_lab.pipeline.reproduce import every_stage, read_preset, reproduce_main
from tests.conftest import CONFIGS
from tests.datamodules import layouts

PAPER = CONFIGS / "reproduce/paper.yaml"
pytestmark = pytest.mark.filterwarnings("ignore")  # tiny data: Lightning warns of few batches


def tiny_data_root(root: Path) -> Path:
    """Every dataset the paper reads, a few images per class; eight ImageNet classes, so the
    multi-layer Mahalanobis baseline has the five out-of-distribution validation images its
    combination is fitted on."""
    for name, write in layouts.WRITERS.items():
        write(root) if name != "imagenet_subset" else layouts.imagenet(root, classes=8)
    return root


def test_the_paper_preset_runs_end_to_end_small(tmp_path: Path):
    (tmp_path / "configs").symlink_to(CONFIGS)  # the preset's paths, from a clean directory
    data = tiny_data_root(tmp_path / "data")
    args = ["--config", str(PAPER), "--smoke", "true", "--data_root", str(data)]
    reproduce_main([*args, "--output_dir", "out"])

    out = tmp_path / "out/smoke"
    stages = every_stage(read_preset(PAPER)["stages"])
    assert len(list(out.glob("stages/*/result.json"))) == len(stages)
    with open(out / "results.csv", newline="") as file:
        measured = {
            (r["table"], r["victim"], r["setting"], r["metric"]) for r in csv.DictReader(file)
        }
    promised = {
        (row.table, row.victim, row.setting, metric)
        for stage in stages
        for row in stage.rows
        for metric in row.metrics
    }
    assert promised - measured == set()  # every row of every table has its number
    tables = (out / "tables.md").read_text()
    assert "not measured in this run" not in tables  # every finding is decided by some row
    assert {p.name for p in (out / "cache").iterdir()} >= {"transfer_sets", "api", "embeddings"}
    assert not (tmp_path / "runs").exists()  # no cache beside the working directory


def test_missing_data_fails_before_the_first_stage(tmp_path: Path):
    """With Bing absent, the Bing stages' data is missing: one line naming the stage and where
    the data was looked for, raised before the first victim trains."""
    (tmp_path / "configs").symlink_to(CONFIGS)
    data = tiny_data_root(tmp_path / "data")
    for path in sorted((data / "bing").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (data / "bing").rmdir()
    args = ["--config", str(PAPER), "--smoke", "true", "--data_root", str(data)]
    with pytest.raises(
        ConfigError, match=r"stage knockoff-caltech256-bing: BingDataModule: .*bing"
    ):
        reproduce_main([*args, "--output_dir", "out"])
    assert not (tmp_path / "out/smoke/stages").exists()
