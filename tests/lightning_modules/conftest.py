"""Fixtures of the detector tests: a small in/out data set and one exported CV detector."""

import contextlib
from pathlib import Path

import pytest

from tests.conftest import CONFIGS

# The embedded in/out data, shrunk: digits vs 400 natural crops (seed 1), 100 "other" crops.
SMALL_IN_OUT = [
    "--data.init_args.out_data.init_args.size",
    "400",
    "--data.init_args.out_test_data.init_args.size",
    "100",
]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def small_in_out(**kwargs):
    from datamodules import CropsPoolDataModule, DigitsDataModule, InOutDataModule

    return InOutDataModule(
        DigitsDataModule(),
        CropsPoolDataModule(size=400, seed=1),
        CropsPoolDataModule("other", size=100),
        **kwargs,
    )


@pytest.fixture(scope="session")
def cv_run(victim_ckpt: Path, tmp_path_factory: pytest.TempPathFactory):
    """configs/detector/digits_cv.yaml run end to end on the small in/out data (3 folds, 4 Cs),
    with the test victim as frozen backbone: (the CLI after fit + test, the exported detector)."""
    from knockoff_lab.pipeline.cli import cli_main

    folder = tmp_path_factory.mktemp("cv_detector")
    with contextlib.chdir(folder):
        cli = cli_main(
            [
                "fit",
                "--config",
                str(CONFIGS / "detector/digits_cv.yaml"),
                "--model.init_args.weights",
                str(victim_ckpt),
                "--model.init_args.folds",
                "3",
                "--model.init_args.Cs",
                "4",
                *SMALL_IN_OUT,
                *QUIET,
            ]
        )
    return cli, folder / "runs/detector/digits_cv/checkpoints/last.ckpt"


@pytest.fixture(scope="session")
def detector_ckpt(cv_run) -> Path:
    return cv_run[1]


def check_saved_scores(folder: Path, data, metrics: dict[str, float]) -> None:
    """`scores.csv` in `folder` holds one row per test image of `data` with the right in/out
    label, its scores give back the logged TPR at TNR 95%, and `roc.png` is a drawn PNG."""
    import csv
    from collections import Counter

    from knockoff_lab.evaluation.ood_metrics import TEST_SETS, read_scores, tpr_at_tnr

    with open(folder / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    sizes = {TEST_SETS[part.test_set]: len(part) for part in data.split("test").dataset.datasets}
    assert Counter((r["set"], r["label"]) for r in rows) == {
        (name, "0" if name == "in" else "1"): n for name, n in sizes.items()
    }
    scores = read_scores(folder / "scores.csv")
    for name in ("out", "out_test"):
        expected = metrics[f"test/tpr_at_tnr95/{name}"]
        assert tpr_at_tnr(scores["in"], scores[name], 0.95)[0] == pytest.approx(expected)
    assert (folder / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (folder / "roc.png").stat().st_size > 10_000  # axes, curves and legend drawn
