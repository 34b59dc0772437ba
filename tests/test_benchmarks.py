"""Every benchmark runs on tiny settings, so none rots unseen between the sessions that quote
it (two had: the GPU check's documented smoke crashed, and transfer_set_memory.py had measured
nothing since the rounds moved into Lightning's hooks). The GPU check, which runs only when a
GPU is lent, is also checked for what it reports: the day a device comes, the number must be
one command away, not a traceback."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.serving import free_port

VICTIM = "{victim}"  # the session's test victim, filled in per run
TINY = {
    "art_knockoff": ["--victim", VICTIM, "--budget", "200", "--epochs", "1", "--repeats", "1"],
    "config_copies": [],
    "data_free_overhead": ["--victim", VICTIM, "--iterations", "2", "--repeats", "1"],
    "data_loading": ["--images", "16", "--repeats", "1", "--workers", "1"],
    "deepfool_classes": ["--images", "4", "--size", "16", "--classes", "20", "--repeats", "1"],
    "deepfool_cost": ["--network", VICTIM, "--images", "128", "--picks", "20", "--repeats", "1"],
    "detector_cost": ["--samples", "2000", "--dims", "64", "--batches", "1"],
    "embedded_regime": ["--queries", "300", "--epochs", "1"],
    "lightning_overhead": ["--epochs", "1", "--repeats", "1"],
    "memory_format": ["--victim", VICTIM, "--budget", "200", "--epochs", "1", "--repeats", "1"],
    "pool_memory": ["--sizes", "500", "--stacked_size", "500"],
    "preset_stage_cost": ["--victim", VICTIM, "--repeats", "1", "--only", "random"],
    "served_throughput": ["--requests", "16", "--images", "8", "--clients", "1", "--repeats", "1"],
    "side_by_side": ["--budgets", "500", "--repeats", "1"],
    "stage_time": ["--victim", VICTIM, "--budget", "300", "--epochs", "1"],
    "strategy_overhead": ["--pool", "300", "--asked", "30", "--count", "30", "--repeats", "1"],
    "transfer_fetch": ["--queries", "200", "--repeats", "1"],
    "transfer_set_memory": ["--queries", "2000", "--classes", "16"],
    "transfer_set_throughput": ["--arch", "digits_cnn", "--queries", "128", "--repeats", "1"],
}
GPU_SMOKE = ["--device", "cpu", "--arch", "resnet18", "--size", "32", "--steps", "2"]


def benchmark(name: str, *args: str) -> subprocess.CompletedProcess:
    """`benchmarks/<name>.py` run as its docstring says, from a folder that sees the
    repository's `configs/` (presets name their stage configs from the repository root) and
    keeps whatever else it writes."""
    if not Path("configs").exists():
        Path("configs").symlink_to(REPO / "configs")
    return subprocess.run(
        [sys.executable, str(REPO / f"benchmarks/{name}.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_every_benchmark_has_a_tiny_run_here():
    assert set(TINY) | {"gpu"} == {path.stem for path in (REPO / "benchmarks").glob("*.py")}


@pytest.mark.parametrize("name", sorted(TINY))
def test_the_benchmark_runs_to_its_report(name: str, victim_ckpt: Path):
    if name == "art_knockoff" and importlib.util.find_spec("art") is None:
        pytest.skip(
            "ART is an optional benchmark dependency: "
            "pip install adversarial-robustness-toolbox==1.20.1"
        )
    args = [str(victim_ckpt) if arg == VICTIM else arg for arg in TINY[name]]
    if name == "served_throughput":
        args += ["--port", str(free_port())]
    proc = benchmark(name, *args)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert proc.stdout.strip(), "it printed no figure"


def test_the_gpu_check_runs_every_part_and_extrapolates_from_the_slower_one(tmp_path: Path):
    out = tmp_path / "gpu.json"
    proc = benchmark(
        "gpu", *GPU_SMOKE, "--images", "48", "--batch", "16", "--workers", "2", "--out", str(out)
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads(out.read_text())
    model, loader = (
        figures["train_images_per_s_bf16_channels_last"],
        figures["store_loader_images_per_s"],
    )
    rates = [model, loader, figures["train_images_per_s_fp32"], figures["queries_per_s_bf16"]]
    rates.append(figures["train_images_per_s_fed_by_store_loader"])
    assert all(math.isfinite(rate) and rate > 0 for rate in rates)
    assert figures["bottleneck"] == ("loader" if loader < model else "model")
    hours = (100_000 / figures["queries_per_s_bf16"] + 200 * 100_000 / min(model, loader)) / 3600
    # the rates are rounded to 0.1 images/s, the hours to 0.01
    assert figures["table2_row_hours_extrapolated"] == pytest.approx(hours, rel=0.01, abs=0.01)


def test_a_store_smaller_than_one_batch_is_refused_before_any_work(tmp_path: Path):
    out = tmp_path / "gpu.json"
    proc = benchmark("gpu", *GPU_SMOKE, "--images", "8", "--batch", "16", "--out", str(out))
    assert proc.returncode == 2
    assert "--images 8 holds no whole batch of --batch 16" in proc.stderr.strip().splitlines()[-1]
    assert not out.exists()
