"""Fixtures of the detector tests: a small in/out data set and one exported CV detector."""

import contextlib
from pathlib import Path

import pytest

from tests.conftest import CONFIGS

# The embedded in/out data, shrunk: digits vs 400 natural crops (seed 1), 100 "other" crops.
SMALL_IN_OUT = ["--data.init_args.out_data.init_args.size", "400",
                "--data.init_args.out_test_data.init_args.size", "100"]  # fmt: skip
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def small_in_out(**kwargs):
    from datamodules import CropsPoolDataModule, DigitsDataModule, InOutDataModule

    return InOutDataModule(
        DigitsDataModule(), CropsPoolDataModule(size=400, seed=1),
        CropsPoolDataModule("other", size=100), **kwargs,
    )  # fmt: skip


@pytest.fixture(scope="session")
def cv_run(victim_ckpt: Path, tmp_path_factory: pytest.TempPathFactory):
    """configs/detector/digits_cv.yaml run end to end on the small in/out data (3 folds, 4 Cs),
    with the test victim as frozen backbone: (the CLI after fit + test, the exported detector)."""
    from main import cli_main

    folder = tmp_path_factory.mktemp("cv_detector")
    with contextlib.chdir(folder):
        cli = cli_main(["fit", "--config", str(CONFIGS / "detector/digits_cv.yaml"),
                        "--model.init_args.weights", str(victim_ckpt),
                        "--model.init_args.folds", "3", "--model.init_args.Cs", "4",
                        *SMALL_IN_OUT, *QUIET])  # fmt: skip
    return cli, folder / "runs/detector/digits_cv/checkpoints/last.ckpt"


@pytest.fixture(scope="session")
def detector_ckpt(cv_run) -> Path:
    return cv_run[1]
