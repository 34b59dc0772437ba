"""Every detector, baseline and guarded-attack YAML parses; the embedded ones run end to end."""

import contextlib
import io
from pathlib import Path

import pytest

from main import cli_main
from tests.conftest import CONFIGS
from tests.lightning_modules.conftest import QUIET, SMALL_IN_OUT

OURS = sorted([*CONFIGS.glob("detector/*.yaml"), *CONFIGS.glob("ood/*.yaml"),
               *CONFIGS.glob("surrogate/digits_guarded*.yaml")])  # fmt: skip
TINY = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "2"]  # fmt: skip


def subcommand(path: Path) -> str:
    return "test" if path.parent.name == "ood" else "fit"


@pytest.mark.parametrize("path", OURS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_parses(path: Path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        cli_main([subcommand(path), "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "class_path: datamodules." in out.getvalue()


def test_scratch_detector_runs():
    cli = cli_main(["fit", "--config", str(CONFIGS / "detector/digits_scratch.yaml"),
                    *TINY, *SMALL_IN_OUT, *QUIET])  # fmt: skip
    assert {"test/tnr", "test/tpr/out", "test/tpr/out_test"} <= set(cli.trainer.callback_metrics)
    assert Path("runs/detector/digits_scratch/checkpoints/best.ckpt").is_file()


def test_cv_detector_runs(cv_run):
    cli, detector = cv_run
    metrics = cli.trainer.callback_metrics
    assert {"test/tnr", "test/tpr/out", "test/tpr_at_tnr95/out"} <= set(metrics)
    assert detector.is_file()  # the exported detector: last.ckpt, nothing to select


@pytest.mark.parametrize("method", ["msp", "odin", "mahalanobis", "mahalanobis_multi"])
def test_baseline_runs(method, victim_ckpt, detector_ckpt):
    cli = cli_main(["test", "--config", str(CONFIGS / f"ood/digits_{method}.yaml"),
                    "--model.init_args.victim", str(victim_ckpt),
                    "--model.init_args.detector", str(detector_ckpt),
                    "--trainer.limit_test_batches", "3", *SMALL_IN_OUT, *QUIET])  # fmt: skip
    metrics = cli.trainer.callback_metrics
    assert {"test/tpr_at_tnr95/out", "test/tpr_at_tnr95/out_test", "test/ours/tnr",
            "test/tpr_at_tnr_ours/out"} <= set(metrics)  # fmt: skip


@pytest.mark.parametrize("name", ["digits_guarded_probs", "digits_guarded_indist_probs"])
def test_guarded_attack_runs(name, victim_ckpt, detector_ckpt):
    natural = name == "digits_guarded_probs"
    pool = ["--data.init_args.pool.init_args.size", "300"] if natural else []
    cli = cli_main(["fit", "--config", str(CONFIGS / f"surrogate/{name}.yaml"),
                    "--data.init_args.victim", str(victim_ckpt),
                    "--data.init_args.detector", str(detector_ckpt),
                    "--data.init_args.budget", "150", *pool, *TINY, *QUIET])  # fmt: skip
    metrics = cli.trainer.callback_metrics
    assert {"transfer/queries_flagged", "transfer/false_refusal_rate", "test/acc"} <= set(metrics)
    flagged = float(metrics["transfer/flagged_rate"])
    assert flagged > 0.9 if natural else flagged < 0.1
