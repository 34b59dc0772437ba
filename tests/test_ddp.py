"""Two-process DDP on CPU (gloo): the code path of multi-GPU runs, checked against one process."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import CONFIGS, REPO

pytestmark = pytest.mark.xdist_group("ddp")  # one DDP run at a time: their ports never race


def run(args: list[str], cwd: Path) -> dict[str, float]:
    cwd.mkdir(exist_ok=True)
    proc = subprocess.run(
        [sys.executable, str(REPO / "main.py"), *args, "--trainer.enable_progress_bar=false"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "WANDB_MODE": "offline"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sync_dist=True" not in proc.stderr  # values every process holds whole: no warning
    return {m[0]: float(m[1]) for m in re.findall(r"(test/[\w/]+)\s+([0-9.]+)", proc.stdout)}


def test_ddp_test_metrics_cover_the_whole_test_set(victim_ckpt, tmp_path):
    """Accuracy of a 2-process test is over all 359 test images, not one shard's. Tolerance:
    DistributedSampler pads 359 to 360 by repeating one image, so at most 1/359 apart."""
    victim = ["--config", str(CONFIGS / "victim/digits_cnn.yaml"), "--ckpt_path", str(victim_ckpt)]
    single = run(["test", *victim], tmp_path / "single")
    ddp = run(
        ["test", *victim, "--config", str(CONFIGS / "trainer/ddp_cpu.yaml")], tmp_path / "ddp"
    )
    assert abs(single["test/acc"] - ddp["test/acc"]) <= 1 / 359 + 1e-6


def cached_answers(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run_dir.glob("runs/transfer_sets/*/round-*/a*.npy")}


def test_ddp_surrogate_training_matches_single_process(victim_ckpt, tmp_path):
    """The 2 processes share the querying (API batches 0 and 2 vs 1 of 600 queries) and build
    bitwise the single process's transfer set; both test on the whole test set. (Their surrogates
    differ: DistributedSampler shuffles other batches, so no accuracy is compared.)"""
    args = [
        "fit",
        "--config",
        str(CONFIGS / "surrogate/digits_natural_probs.yaml"),
        "--data.init_args.api.init_args.victim",
        str(victim_ckpt),
        "--data.init_args.budget",
        "600",
        "--trainer.max_epochs",
        "3",
    ]
    single = run(args, tmp_path / "single")
    ddp = run(
        [
            *args,
            "--config",
            str(CONFIGS / "trainer/ddp_cpu.yaml"),
            "--data.init_args.batch_size",
            "32",
        ],
        tmp_path / "ddp",
    )
    assert abs(single["test/acc_victim"] - ddp["test/acc_victim"]) <= 1 / 359 + 1e-6
    answers = cached_answers(tmp_path / "single")
    assert answers == cached_answers(tmp_path / "ddp")
    assert len(answers) == 3  # 256 + 256 + 88 queries


def test_ddp_detection_scores_are_gathered_from_every_process(victim_ckpt, tmp_path):
    """Each process scores its shard of the in/out test set; `scores.csv` and the metrics cover
    all of it, as one process's do (DistributedSampler may repeat one image to even the shards),
    and the logged metrics are those of the gathered scores."""

    from lightning.pytorch import Trainer

    from knockoff_lab.evaluation.ood_metrics import read_scores, tpr_at_tnr
    from knockoff_lab.ood import MSP
    from lightning_modules import OODBaseline
    from tests.lightning_modules.conftest import SMALL_IN_OUT, small_in_out

    trainer = Trainer(
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path / "single"),
    )
    trainer.test(OODBaseline(str(victim_ckpt), MSP()), small_in_out(), verbose=False)[0]
    photos = [
        "--data.init_args.out_data.init_args.style",
        "photo",
        "--data.init_args.out_test_data.init_args.style",
        "photo",
    ]  # as small_in_out()
    ddp = run(
        [
            "test",
            "--config",
            str(CONFIGS / "ood/digits.yaml"),
            *SMALL_IN_OUT,
            *photos,
            "--model.init_args.victim",
            str(victim_ckpt),
            "--model.init_args.detector",
            "null",
            "--config",
            str(CONFIGS / "trainer/ddp_cpu.yaml"),
        ],
        tmp_path / "ddp",
    )
    expected = read_scores(tmp_path / "single/scores.csv")
    (saved,) = (tmp_path / "ddp").rglob("scores.csv")
    got = read_scores(saved)
    assert {k: len(v) for k, v in expected.items()} == {"in": 359, "out": 40, "out_test": 100}
    assert sum(len(got[k]) - len(v) for k, v in expected.items()) in (0, 1)
    for name, scores in expected.items():  # every image scored, by either process
        assert torch.isclose(scores[:, None], got[name][None, :], atol=1e-6).any(1).all()
    for name in ("out", "out_test"):
        gathered = tpr_at_tnr(got["in"], got[name], 0.95)[0]
        assert ddp[f"test/tpr_at_tnr95/{name}"] == pytest.approx(gathered, abs=1e-4)
