"""A reduced `reproduce` run end to end: report structure (ROC figures, W&B run included), the
progress display, stage caching, resume, --force."""

import contextlib
import csv
import functools
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml

from knockoff_lab.pipeline.cli import cli_main  # noqa: F401  (registers the model and data classes)
from knockoff_lab.pipeline.findings import FINDINGS
from knockoff_lab.pipeline.keys import check_keys
from knockoff_lab.pipeline.report import PAPER, write_tables
from knockoff_lab.pipeline.reproduce import every_stage, read_preset, reproduce_main
from knockoff_lab.pipeline.stages import stage_output
from tests.conftest import CONFIGS

LABEL_ONLY = CONFIGS / "defences/label_only.yaml"
TINY = {"trainer.max_epochs": 1, "trainer.limit_train_batches": 3, "trainer.limit_val_batches": 2}
ATTACK = {"acc_victim": "test/acc_victim", "acc_surrogate": "test/acc", "recovery": "test/recovery"}
# The detectors' in/out data, shrunk: 40 + 100 out-of-distribution test images beside 359 digits.
IN_OUT = {
    "data.init_args.out_data.init_args.size": 400,
    "data.init_args.out_test_data.init_args.size": 100,
}


def detection_stages() -> list[dict]:
    """A scratch detector and the MSP baseline (scored by the tiny victim), in Tables 3 and 4a."""
    tpr = {"tpr": "test/tpr/out", "tnr": "test/tnr"}
    return [
        {
            "name": "detector",
            "config": str(CONFIGS / "detector/digits_scratch.yaml"),
            "set": dict(IN_OUT),
            "rows": [
                {"table": "3", "victim": "digits-cnn", "setting": "cnn_scratch", "metrics": tpr},
                {"table": "4a", "victim": "digits-cnn", "setting": "cnn_scratch", "metrics": tpr},
            ],
        },
        {
            "name": "msp",
            "config": str(CONFIGS / "ood/digits.yaml"),
            "command": "test",
            "inputs": {"model.init_args.victim": "victim"},
            "set": {**IN_OUT, "model.init_args.detector": None},
            "rows": [
                {
                    "table": "4a",
                    "victim": "digits-cnn",
                    "setting": "msp",
                    "metrics": {"tpr_at_tnr95": "test/tpr_at_tnr95/out"},
                }
            ],
        },
    ]


def tiny_config(tmp_path: Path, detection: bool = False) -> Path:
    surrogate = {"data.init_args.budget": 200, "data.init_args.pool.init_args.size": 300}
    config = {
        "output_dir": str(tmp_path / "out"),
        "set": TINY,
        "stages": [
            {"name": "victim", "config": str(CONFIGS / "victim/digits_cnn.yaml")},
            *[
                {
                    "name": f"knockoff-{g}",
                    "config": [str(CONFIGS / "surrogate/digits_natural_probs.yaml"), *overlays],
                    "inputs": {"data.init_args.api.init_args.victim": "victim"},
                    "set": dict(surrogate),
                    "rows": [
                        {"table": "6", "victim": "digits-cnn", "setting": g, "metrics": ATTACK}
                    ],
                }
                for g, overlays in (("probs", []), ("label", [str(LABEL_ONLY)]))
            ],
            *(detection_stages() if detection else []),
        ],
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_reduced_pipeline_writes_the_report_and_caches_stages(tmp_path, capsys):
    config = tiny_config(tmp_path, detection=True)
    out = reproduce_main(["--config", str(config), "--wandb", "true"])
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["table", "victim", "setting", "metric", "seed", "value"]
    assert {r["seed"] for r in rows} == {"0"}  # one seed: no aggregate rows
    assert {(r["setting"], r["metric"]) for r in rows} >= {
        ("probs", "recovery"),
        ("label", "acc_surrogate"),
    }
    values = {(r["setting"], r["metric"]): float(r["value"]) for r in rows}
    for setting in ("probs", "label"):  # each stage's own metrics, in their rows
        stage = next((out / "stages").glob(f"knockoff-{setting}-*"))
        logged = json.loads((stage / "result.json").read_text())["metrics"]
        for name, metric in ATTACK.items():
            assert values[(setting, name)] == round(logged[metric], 4), (setting, name)
        assert values[(setting, "recovery")] == pytest.approx(
            values[(setting, "acc_surrogate")] / values[(setting, "acc_victim")], abs=1e-3
        )
    assert values[("probs", "acc_victim")] == values[("label", "acc_victim")]  # one victim
    tables = (out / "tables.md").read_text()
    assert "## Table 6" in tables and "| digits-cnn |" in tables
    assert "Label-only answers degrade the surrogate (Table 6): **" in tables
    assert len([line for line in tables.splitlines() if line.startswith("- ")]) == len(FINDINGS)
    assert list((out / "figures").glob("knockoff-probs_figure1_transfer_histogram.png"))
    assert list((out / "figures").glob("knockoff-probs_figure2.png"))  # its curve was scored
    assert "## Table 4a" in tables and "| digits-cnn | msp |" in tables
    for table in ("3", "4a"):  # one combined ROC figure per detection table, linked under it
        assert f"](figures/roc_table{table}.png)" in tables
        assert (out / "figures" / f"roc_table{table}.png").stat().st_size > 10_000
    assert {p.name for p in (out / "figures").glob("*_roc.png")} == {
        "detector_roc.png",
        "msp_roc.png",
    }
    msp = next((out / "stages").glob("msp-*"))
    victim_ckpt = next((out / "stages").glob("victim-*")) / "checkpoints/best.ckpt"
    scored_by = yaml.safe_load((msp / "config.yaml").read_text())["model"]["init_args"]["victim"]
    assert scored_by == str(victim_ckpt.absolute())  # `inputs`: the victim stage's checkpoint
    with open(msp / "scores.csv", newline="") as f:
        labels = Counter((r["set"], r["label"]) for r in csv.DictReader(f))
    assert labels == {("in", "0"): 359, ("out", "1"): 40, ("out_test", "1"): 100}
    # the report went to one offline W&B run in the output folder, no network needed
    (run,) = (out / "wandb").glob("offline-run-*")
    assert list(run.glob("run-*.wandb"))
    assert len(list(run.glob("files/media/images/figures/*.png"))) == len(
        list((out / "figures").glob("*.png"))
    )
    # progress: one line per stage event; Lightning's output goes to the stage's stdout.log
    console = capsys.readouterr()
    lines = console.out.splitlines()
    assert [line.split("]")[0] for line in lines if ": done in " in line] == [
        f"[{n}/5" for n in range(1, 6)
    ]
    assert any(line.startswith("[1/5] victim: running fit ") for line in lines)
    assert "GPU available" not in console.out + console.err
    victim = next((out / "stages").glob("victim-*"))
    assert "GPU available" in (victim / "stdout.log").read_text()

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
    assert log.count("cached") == 4 and "knockoff-label: running" in log


def test_seeds_repeat_every_attack_stage_and_the_report_shows_their_spread(tmp_path, capsys):
    config = yaml.safe_load(tiny_config(tmp_path).read_text())
    config["seeds"] = 2
    label = next(s for s in config["stages"] if s["name"] == "knockoff-label")
    label["seeds"] = 1  # a stage's own number of seeds wins over the preset's
    (tmp_path / "seeds.yaml").write_text(yaml.safe_dump(config))
    out = reproduce_main(["--config", str(tmp_path / "seeds.yaml")])
    names = sorted(p.name.rsplit("-", 1)[0] for p in (out / "stages").iterdir())
    assert names == [
        "knockoff-label",
        "knockoff-probs",
        "knockoff-probs.s1",
        "victim",
    ]  # the victim is trained once
    seeded = yaml.safe_load(
        next((out / "stages").glob("knockoff-probs.s1-*/config.yaml")).read_text()
    )
    assert seeded["seed_everything"] == 1 and seeded["data"]["init_args"]["seed"] == 1
    with open(out / "results.csv", newline="") as f:
        rows = {
            (r["setting"], r["metric"], r["seed"]): float(r["value"]) for r in csv.DictReader(f)
        }
    per_seed = [rows[("probs", "acc_surrogate", s)] for s in ("0", "1")]
    assert rows[("probs", "acc_surrogate", "mean")] == pytest.approx(sum(per_seed) / 2, abs=1e-4)
    assert rows[("probs", "acc_surrogate", "min")] == min(per_seed)
    assert rows[("probs", "acc_surrogate", "max")] == max(per_seed)
    first = json.loads(next((out / "stages").glob("knockoff-probs-*/result.json")).read_text())
    assert rows[("probs", "acc_surrogate", "0")] == round(first["metrics"]["test/acc"], 4)
    tables = (out / "tables.md").read_text()
    low, high = (f"{100 * v:.1f}" for v in sorted(per_seed))
    assert f"{100 * sum(per_seed) / 2:.1f}% [{low}, {high}]" in tables
    assert "1 seed: no spread to judge by" in tables  # label (1 seed) against probs (2)
    assert "[1/4] victim" in capsys.readouterr().out


def test_a_rerun_resumes_and_reuses_stages_from_another_working_directory(
    tmp_path, monkeypatch, capsys
):
    """Issue 18: a stage killed after its checkpoint resumes from it (and tests the weights it
    saved); finished stages are reused from another working directory, their figures and
    results included: a record holds paths relative to its stage folder, not to the cwd of the
    run that wrote it."""
    first = tmp_path / "first"
    first.mkdir()
    monkeypatch.chdir(first)
    config = yaml.safe_load(tiny_config(tmp_path).read_text())
    config["output_dir"] = "out"  # relative to the first run's working directory
    (first / "tiny.yaml").write_text(yaml.safe_dump(config))
    out = reproduce_main(["--config", "tiny.yaml"])
    victim = next((out / "stages").glob("victim-*"))
    before = json.loads((victim / "result.json").read_text())["metrics"]
    trained = (victim / "checkpoints/best.ckpt").stat().st_mtime_ns
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert "knockoff-probs_figure1_transfer_histogram.png" in figures
    results = (out / "results.csv").read_text()
    (victim / "result.json").unlink()  # as if killed after the checkpoint, before the result
    shutil.rmtree(out / "figures")
    (out / "results.csv").unlink()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    reproduce_main(["--config", str(first / "tiny.yaml"), "--output_dir", str(first / "out")])
    log = capsys.readouterr().out
    assert f"victim: resuming from {first / victim / 'checkpoints/last.ckpt'}" in log
    assert log.count(": cached (") == 2, log  # both surrogates
    after = json.loads((first / victim / "result.json").read_text())["metrics"]
    assert after == pytest.approx(before)  # the weights it saved, tested again
    assert (first / victim / "checkpoints/best.ckpt").stat().st_mtime_ns == trained  # no retraining
    assert sorted(p.name for p in (first / out / "figures").iterdir()) == figures
    assert (first / out / "results.csv").read_text() == results
    assert list(elsewhere.iterdir()) == []  # nothing written under the new working directory


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
    from knockoff_lab.core.errors import ConfigError

    with pytest.raises(ConfigError, match="stage 'knockoff-probs' reads \\['victim'\\]"):
        reproduce_main(["--config", str(path)])


@pytest.mark.parametrize(
    "path", sorted((CONFIGS / "reproduce").glob("*.yaml")), ids=lambda p: p.name
)
def test_reproduce_configs_parse(path: Path):
    """Every stage of every preset, families expanded, read as the pipeline reads it."""
    preset = read_preset(path)
    stages = every_stage(preset["stages"], preset["grids"])
    with contextlib.chdir(CONFIGS.parent):  # stage configs are relative to the repository
        check_keys(stages, preset["set"] or {}, path.name)  # each `set` key: a setting of its stage
    names = [stage.name for stage in stages]
    assert len(names) == len(set(names))
    for stage in stages:
        assert all((CONFIGS.parent / path).exists() for path in stage.configs)
        assert set(stage.inputs.values()) <= set(names[: names.index(stage.name)])


def test_stage_output_goes_to_its_log_and_with_verbose_also_to_the_console(tmp_path, capsys):
    import logging

    lightning = logging.getLogger("lightning.pytorch")
    handlers = list(lightning.handlers)
    for verbose in (False, True):
        log = tmp_path / f"{verbose}.log"
        with stage_output(log, verbose):
            print("a print")
            lightning.info("a log record")
        console = capsys.readouterr()
        assert "a print" in log.read_text() and "a log record" in log.read_text()
        assert ("a print" in console.out) is verbose and ("a log record" in console.err) is verbose
    assert lightning.handlers == handlers  # restored


def test_paper_preset_shows_the_papers_detection_figures_beside_ours(tmp_path):
    stages = every_stage(read_preset(CONFIGS / "reproduce/paper.yaml")["stages"])
    detection = [
        (r.table, r.victim, r.setting, metric)
        for stage in stages
        for r in stage.rows
        if r.table in {"3", "4a", "4b"}
        for metric in r.metrics
    ]
    assert len({k[:3] for k in detection}) == 8 + 2 * 5 * 5  # Table 3; 4a, 4b: 5 victims x 5
    # every cell of the paper's Tables 3 and 4 has its row (single-layer Mahalanobis is ours)
    assert {k for k in detection if k[2] != "mahalanobis"} == {
        k for k in PAPER if k[0] in {"3", "4a", "4b"}
    }
    results = {
        ("4a", "cubs200-rn34", "ours", "tpr"): [0.9],
        ("4a", "cubs200-rn34", "msp", "tpr_at_tnr95"): [0.4],
    }
    write_tables(tmp_path / "tables.md", results, paper=True)
    tables = (tmp_path / "tables.md").read_text()
    assert "| cubs200-rn34 | ours | 90.0% [paper 93.0%] | n/a |" in tables
    assert "| cubs200-rn34 | msp | n/a | 40.0% [paper 39.0%] |" in tables


@pytest.mark.parametrize("preset", ["paper.yaml", "embedded.yaml"])
def test_every_finding_is_decided_by_rows_the_preset_writes(preset: str):
    """Each finding reads rows of the report (table, victim, setting, metric); a preset that
    writes none of them would leave it "not measured" after days of GPU."""
    stages = every_stage(read_preset(CONFIGS / "reproduce" / preset)["stages"])
    results = {
        (row.table, row.victim, row.setting, metric): [0.5]
        for stage in stages
        for row in stage.rows
        for metric in row.metrics
    }
    assert [finding.claim for finding in FINDINGS if finding.check(results) is None] == []


TYPO = (
    r"bad\.yaml: stage victim: {where} key 'trainer\.max_epoch' is not a setting of "
    r"\S+/configs/victim/digits_cnn\.yaml: trainer \(arguments of "
    r"lightning\.pytorch\.Trainer\) has no 'max_epoch'; did you mean "
    r"'trainer\.max_epochs'\?$"
)


@pytest.mark.parametrize(
    "stage, top, message",
    [
        ({"name": "../../x"}, {}, r"stage name '../../x' must be letters, digits"),
        ({"name": "/tmp/x"}, {}, r"stage name '/tmp/x' must be letters"),
        ({"config": "missing.yaml"}, {}, "stage victim: config missing.yaml does not exist"),
        ({"seeds": 0}, {}, "stage victim: seeds must be >= 1, got 0"),
        ({"set": {"trainer.max_epoch": 1}}, {}, TYPO.format(where="set")),
        ({}, {"trainer.max_epoch": 1}, TYPO.format(where="top-level set")),
        (  # a preset is a config too: a function is never built from it
            {"set": {"model.init_args.optimizer": {"class_path": "torch.hub.load"}}},
            {},
            "stage victim: model.init_args.optimizer.class_path: 'torch.hub.load' is a function",
        ),
    ],
)
def test_bad_stages_fail_before_any_stage_runs(tmp_path, stage, top, message):
    """Checked when the preset is read: a name outside output_dir, a missing config, a `set`
    key the stage's YAML does not have (a typo would otherwise fail, or be ignored, hours in),
    a `set` value naming something other than a trusted class."""
    from knockoff_lab.core.errors import ConfigError

    config = yaml.safe_load(tiny_config(tmp_path).read_text())
    config["stages"][0].update(stage)
    config["set"].update(top)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=message):
        reproduce_main(["--config", str(path)])
    assert not (tmp_path / "out").exists() and not (tmp_path / "x").exists()


def test_command_line_settings_set_one_leaf_each_over_the_presets(tmp_path, monkeypatch):
    """`--set.trainer.max_epochs 3` and `--set '{...}'` add to the preset's `set`, one leaf
    each: the trainer's other settings (the preset's limits, the YAML's callbacks) stay."""
    from knockoff_lab.pipeline import reproduce as module
    from knockoff_lab.pipeline.stages import Stage, StageRunner

    given: dict = {}

    @functools.wraps(module.reproduce)  # its signature: the preset parser's arguments
    def capture(**kwargs) -> None:
        given.update(kwargs)

    monkeypatch.setattr(module, "reproduce", capture)
    args = ["--config", str(tiny_config(tmp_path)), "--set.trainer.max_epochs", "3"]
    module.reproduce_main([*args, "--set", "{trainer: {limit_val_batches: 4}}"])
    assert given["set"] == {**TINY, "trainer.max_epochs": 3, "trainer.limit_val_batches": 4}
    stage = Stage(name="victim", config=str(CONFIGS / "victim/digits_cnn.yaml"))
    trainer = StageRunner(tmp_path, given["set"]).effective_config(stage, tmp_path)["trainer"]
    assert (trainer["max_epochs"], trainer["limit_train_batches"]) == (3, 3)
    assert any("Checkpoint" in callback["class_path"] for callback in trainer["callbacks"])


def test_a_class_path_in_set_stays_data_until_the_stage_builds_it(tmp_path):
    """A scorer given as a `class_path` mapping in a stage's `set` is read as a mapping, not
    built while the preset is parsed, so the stage's config.yaml can be written."""
    from knockoff_lab.pipeline.stages import StageRunner

    msp = {"class_path": "knockoff_lab.ood.MSP"}
    stage = {"name": "msp", "config": str(CONFIGS / "ood/digits.yaml"), "command": "test"}
    preset = {"stages": [{**stage, "set": {"model.init_args.scorer": msp}}]}
    (path := tmp_path / "preset.yaml").write_text(yaml.safe_dump(preset))
    [read] = every_stage(read_preset(path)["stages"])
    assert read.set == {"model.init_args.scorer": msp}
    config = StageRunner(tmp_path, {}).effective_config(read, tmp_path / "msp")
    scorer = yaml.safe_load(yaml.safe_dump(config))["model"]["init_args"]["scorer"]
    assert scorer["class_path"] == msp["class_path"]
