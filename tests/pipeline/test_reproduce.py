"""A reduced `reproduce` run end to end: report structure, stage caching, resume, --force."""

import csv
import json
from pathlib import Path

import pytest
import yaml

from main import cli_main  # noqa: F401  (registers the model and data classes)
from pipeline import reproduce_main
from pipeline.report import FINDINGS
from tests.conftest import CONFIGS

TINY = {"trainer.max_epochs": 1, "trainer.limit_train_batches": 3, "trainer.limit_val_batches": 2}
ATTACK = {"acc_victim": "test/acc_victim", "acc_surrogate": "test/acc", "recovery": "test/recovery"}


def tiny_config(tmp_path: Path) -> Path:
    surrogate = {"data.init_args.budget": 200, "data.init_args.pool.init_args.size": 300}
    config = {
        "output_dir": str(tmp_path / "out"),
        "set": TINY,
        "stages": [
            {"name": "victim", "config": str(CONFIGS / "victim/digits_cnn.yaml")},
            *[
                {"name": f"knockoff-{g}",
                 "config": str(CONFIGS / f"surrogate/digits_natural_{g}.yaml"),
                 "inputs": {"data.init_args.victim": "victim"}, "set": dict(surrogate),
                 "rows": [{"table": "6", "victim": "digits-cnn", "setting": g, "metrics": ATTACK}]}
                for g in ("probs", "label")
            ],
        ],
    }  # fmt: skip
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_reduced_pipeline_writes_the_report_and_caches_stages(tmp_path, capsys):
    config = tiny_config(tmp_path)
    out = reproduce_main(["--config", str(config)])
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["table", "victim", "setting", "metric", "value"]
    assert {(r["setting"], r["metric"]) for r in rows} >= {
        ("probs", "recovery"),
        ("label", "acc_surrogate"),
    }
    tables = (out / "tables.md").read_text()
    assert "## Table 6" in tables and "| digits-cnn |" in tables
    assert "Label-only answers degrade the surrogate (Table 6): **" in tables
    assert len([line for line in tables.splitlines() if line.startswith("- ")]) == len(FINDINGS)
    assert list((out / "figures").glob("knockoff-probs_figure1_transfer_histogram.png"))
    assert "[3/3" in capsys.readouterr().out  # progress display

    stages = sorted((out / "stages").iterdir())
    stamps = {p.name: (p / "result.json").stat().st_mtime_ns for p in stages}
    reproduce_main(["--config", str(config)])
    assert "cached" in capsys.readouterr().out
    assert {p.name: (p / "result.json").stat().st_mtime_ns for p in stages} == stamps

    # a changed surrogate setting retrains only what it affects
    changed = yaml.safe_load(config.read_text())
    changed["stages"][2]["set"]["data.init_args.batch_size"] = 32
    config.write_text(yaml.safe_dump(changed))
    reproduce_main(["--config", str(config)])
    log = capsys.readouterr().out
    assert log.count("cached") == 2 and "knockoff-label: running" in log


def test_unfinished_stage_resumes_from_its_last_checkpoint(tmp_path, capsys):
    config = tiny_config(tmp_path)
    out = reproduce_main(["--config", str(config)])
    victim = next((out / "stages").glob("victim-*"))
    (victim / "result.json").unlink()  # as if killed after the checkpoint, before the result
    reproduce_main(["--config", str(config)])
    assert f"victim: resuming from {victim / 'checkpoints/last.ckpt'}" in capsys.readouterr().out
    assert json.loads((victim / "result.json").read_text())["metrics"]["test/acc"] >= 0


def test_force_redoes_everything(tmp_path, capsys):
    config = tiny_config(tmp_path)
    reproduce_main(["--config", str(config)])
    capsys.readouterr()
    reproduce_main(["--config", str(config), "--force", "true"])
    assert "cached" not in capsys.readouterr().out


def test_stage_reading_a_later_stage_is_a_clear_error(tmp_path):
    config = yaml.safe_load(tiny_config(tmp_path).read_text())
    config["stages"] = config["stages"][1:]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    from lightning_modules.errors import ConfigError

    with pytest.raises(ConfigError, match="stage 'knockoff-probs' reads \\['victim'\\]"):
        reproduce_main(["--config", str(path)])


@pytest.mark.parametrize(
    "path", sorted((CONFIGS / "reproduce").glob("*.yaml")), ids=lambda p: p.name
)
def test_reproduce_configs_parse(path: Path):
    from jsonargparse import ArgumentParser

    from pipeline import reproduce

    parser = ArgumentParser(exit_on_error=False)
    parser.add_function_arguments(reproduce)
    config = parser.parse_object(yaml.safe_load(path.read_text()))
    stages = parser.instantiate(config).stages
    names = [stage.name for stage in stages]
    assert len(names) == len(set(names))
    for stage in stages:
        assert (Path.cwd() / stage.config).exists() or (CONFIGS.parent / stage.config).exists()
        assert set(stage.inputs.values()) <= set(names[: names.index(stage.name)])
