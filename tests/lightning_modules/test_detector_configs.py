"""Every detector, baseline and guarded-attack YAML parses (so do the paper preset's baseline
stages, their settings applied); the embedded ones run end to end."""

import contextlib
import io
import json
from pathlib import Path

import pytest
import yaml

from knockoff_lab.ood import OOD_SCORERS
from knockoff_lab.pipeline.cli import cli_main
from knockoff_lab.pipeline.reproduce import every_stage, read_preset
from knockoff_lab.pipeline.stages import Stage, read_yaml, resolved, set_dotted
from tests.conftest import CONFIGS
from tests.lightning_modules.conftest import QUIET, SMALL_IN_OUT

OURS = sorted(
    [
        *CONFIGS.glob("detector/*.yaml"),
        *CONFIGS.glob("ood/*.yaml"),
    ]
)
TINY = [
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "2",
    "--trainer.limit_val_batches",
    "1",
    "--trainer.limit_test_batches",
    "2",
]


def subcommand(path: Path) -> str:
    return "test" if path.parent.name == "ood" else "fit"


@pytest.mark.parametrize("path", OURS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_parses(path: Path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        cli_main([subcommand(path), "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "class_path: datamodules." in out.getvalue()


def one_per_setting(stages: list[Stage]) -> list[Stage]:
    """The paper preset's `ood-<victim>-<baseline>` stages, the first of each baseline."""
    first: dict[str, Stage] = {}
    for stage in stages:
        if stage.name.startswith("ood-"):
            first.setdefault(stage.name.split("-", 2)[2], stage)
    return list(first.values())


PAPER = read_preset(CONFIGS / "reproduce/paper.yaml")
PAPER_BASELINES = one_per_setting(every_stage(PAPER["stages"]))
SCORERS = {
    "msp": ("MSP", None),
    "odin": ("ODIN", None),
    "mahalanobis": ("Mahalanobis", ["penultimate"]),
    "mahalanobis-multi": ("Mahalanobis", [f"layer{i}" for i in range(1, 5)]),
}


@pytest.mark.parametrize("stage", PAPER_BASELINES, ids=lambda s: s.name)
def test_paper_baseline_stage_parses_with_its_scorer(stage: Stage, tmp_path: Path, monkeypatch):
    """As the pipeline writes the stage's config: its YAML, fragments inlined, the preset's and
    the stage's settings applied in order (read with the pipeline's own reader, not plain
    YAML, so a value it could not write fails here)."""
    monkeypatch.chdir(CONFIGS.parent)  # a preset's paths are relative to the repository
    config = read_yaml(stage)
    for key, value in resolved({**PAPER["set"], **stage.set}):
        set_dotted(config, key, value)
    (path := tmp_path / "stage.yaml").write_text(yaml.safe_dump(config))
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        cli_main(["test", "--config", str(path), "--print_config"])
    scorer = yaml.safe_load(out.getvalue())["model"]["init_args"]["scorer"]
    name, layers = SCORERS[stage.name.split("-", 2)[2]]
    assert scorer["class_path"] == f"knockoff_lab.ood.{name}"
    assert scorer.get("init_args", {}).get("layers") == layers
    assert len(PAPER_BASELINES) == len(SCORERS)


def test_scratch_detector_runs():
    cli = cli_main(
        [
            "fit",
            "--config",
            str(CONFIGS / "detector/digits_scratch.yaml"),
            *TINY,
            *SMALL_IN_OUT,
            *QUIET,
        ]
    )
    assert {"test/tnr", "test/tpr/out", "test/tpr/out_test"} <= set(cli.trainer.callback_metrics)
    assert Path("runs/detector/digits_scratch/checkpoints/best.ckpt").is_file()


def test_cv_detector_runs(cv_run):
    cli, detector = cv_run
    metrics = cli.trainer.callback_metrics
    assert {"test/tnr", "test/tpr/out", "test/tpr_at_tnr95/out"} <= set(metrics)
    assert detector.is_file()  # the exported detector: last.ckpt, nothing to select


SCORER_YAMLS = sorted((CONFIGS / "ood/scorers").glob("*.yaml"))
MULTI = ["--model.init_args.scorer.init_args.layers", "[features.2, features.6, penultimate]"]


def test_every_registered_scorer_has_its_yaml():
    """An OOD scorer is one file and one YAML: the YAMLs name every registered scorer."""
    named = {yaml.safe_load(p.read_text())["class_path"].rsplit(".", 1)[1] for p in SCORER_YAMLS}
    assert named == {cls.__name__ for cls in OOD_SCORERS.values()}


@pytest.mark.parametrize(
    "scorer, extra",
    [*((p, []) for p in SCORER_YAMLS), (CONFIGS / "ood/scorers/mahalanobis.yaml", MULTI)],
    ids=[*(p.stem for p in SCORER_YAMLS), "mahalanobis_multi"],
)
def test_baseline_runs(scorer: Path, extra: list[str], victim_ckpt, detector_ckpt):
    cli = cli_main(
        [
            "test",
            "--config",
            str(CONFIGS / "ood/digits.yaml"),
            "--model.init_args.scorer",
            str(scorer),
            *extra,
            "--model.init_args.victim",
            str(victim_ckpt),
            "--model.init_args.detector",
            str(detector_ckpt),
            "--trainer.limit_test_batches",
            "3",
            *SMALL_IN_OUT,
            *QUIET,
        ]
    )
    metrics = cli.trainer.callback_metrics
    assert {
        "test/tpr_at_tnr95/out",
        "test/tpr_at_tnr95/out_test",
        "test/ours/tnr",
        "test/tpr_at_tnr_ours/out",
    } <= set(metrics)


@pytest.mark.parametrize("natural", [True, False], ids=["natural", "in_distribution"])
def test_guarded_attack_runs(natural, victim_ckpt, detector_ckpt):
    """The paper's detector in front of the API (configs/defences/detector.yaml) flags the
    Knockoff queries and passes the in-distribution attacker's."""
    pool = ["--data.init_args.pool.init_args.size", "300"] if natural else []
    overlays = ["defences/detector.yaml", "callbacks/defence_report.yaml"]
    overlays += [] if natural else ["attacks/in_distribution.yaml"]
    defences = yaml.safe_load((CONFIGS / overlays[0]).read_text())["data"]["init_args"]["api"]
    defences = defences["init_args"]["defences"]
    defences[0]["init_args"]["detector"] = str(detector_ckpt)  # a list is given whole
    cli = cli_main(
        [
            "fit",
            "--config",
            str(CONFIGS / "surrogate/digits_natural_probs.yaml"),
            *(arg for overlay in overlays for arg in ("--config", str(CONFIGS / overlay))),
            "--data.init_args.api.init_args.victim",
            str(victim_ckpt),
            "--data.init_args.api.init_args.defences",
            json.dumps(defences),
            "--data.init_args.budget",
            "150",
            *pool,
            *TINY,
            *QUIET,
        ]
    )
    metrics = cli.trainer.callback_metrics
    assert {"transfer/queries_flagged", "transfer/false_refusal_rate", "test/acc"} <= set(metrics)
    flagged = float(metrics["transfer/flagged_rate"])
    assert flagged > 0.9 if natural else flagged < 0.1
