"""The GPU check (`benchmarks/gpu.py`) runs only when a GPU is lent, so its CPU smoke runs here:
the day a device comes, the number must be one command away, not a traceback."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SMOKE = ["--device", "cpu", "--arch", "resnet18", "--size", "32", "--steps", "2"]


def gpu_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks/gpu.py"), *SMOKE, *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_gpu_check_runs_every_part_and_extrapolates_from_the_slower_one(tmp_path: Path):
    out = tmp_path / "gpu.json"
    proc = gpu_check("--images", "48", "--batch", "16", "--workers", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads(out.read_text())
    rates = [
        figures[key]
        for key in (
            "train_images_per_s_fp32",
            "train_images_per_s_bf16_channels_last",
            "queries_per_s_bf16",
            "store_loader_images_per_s",
            "train_images_per_s_fed_by_store_loader",
        )
    ]
    assert all(math.isfinite(rate) and rate > 0 for rate in rates)
    model, loader = figures["train_images_per_s_bf16_channels_last"], rates[3]
    assert figures["bottleneck"] == ("loader" if loader < model else "model")
    hours = (100_000 / figures["queries_per_s_bf16"] + 200 * 100_000 / min(model, loader)) / 3600
    # the rates are rounded to 0.1 images/s, the hours to 0.01
    assert figures["table2_row_hours_extrapolated"] == pytest.approx(hours, rel=0.01, abs=0.01)


def test_a_store_smaller_than_one_batch_is_refused_before_any_work(tmp_path: Path):
    proc = gpu_check("--images", "8", "--batch", "16", "--out", str(tmp_path / "gpu.json"))
    assert proc.returncode == 2
    assert "--images 8 holds no whole batch of --batch 16" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "gpu.json").exists()
