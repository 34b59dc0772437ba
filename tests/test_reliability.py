"""Kills and resumes with a real SIGKILL of a subprocess, and determinism on CPU."""

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

from tests.conftest import CONFIGS, REPO

BUILD = textwrap.dedent("""
    import sys, time
    from datamodules import CropsPoolDataModule, DigitsDataModule, TransferSetDataModule
    from lightning_modules.api import PredictionAPI

    victim, cache, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    original = PredictionAPI.posteriors

    def posteriors(self, images):  # slowed down, and every answered query is logged
        time.sleep(delay)
        answers = original(self, images)
        with open(cache + ".answered", "a") as log:
            log.write(f"{len(images)}\\n")
        return answers

    PredictionAPI.posteriors = posteriors
    data = TransferSetDataModule(victim=victim, pool=CropsPoolDataModule(size=400),
                                 victim_data=DigitsDataModule(), budget=320, cache_dir=cache,
                                 query_batch_size=32)
    data.prepare_data()
    data.setup()
    print(data.folder)
""")


def run_build(victim: Path, cache: str, delay: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", BUILD, str(victim), cache, str(delay)],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)  # fmt: skip


def test_sigkill_during_transfer_set_build_then_rerun(victim_ckpt, tmp_path):
    cache = str(tmp_path / "killed")
    proc = run_build(victim_ckpt, cache, delay=0.3)
    deadline = time.time() + 120
    while len(list(Path(cache).rglob("q*.npy"))) < 3 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(list(Path(cache).rglob("q*.npy"))) < 10  # killed half-way
    assert not [p for p in Path(cache).rglob("q*.npy") if p.stat().st_size == 0]

    resumed = run_build(victim_ckpt, cache)
    folder = Path(resumed.communicate(timeout=300)[0].strip().splitlines()[-1])
    clean = run_build(victim_ckpt, str(tmp_path / "clean"))
    clean_folder = Path(clean.communicate(timeout=300)[0].strip().splitlines()[-1])

    answered = sum(int(n) for n in Path(cache + ".answered").read_text().split())
    assert 320 <= answered <= 320 + 32  # at most the one batch in flight at the kill is re-asked
    chunks = lambda f: np.concatenate([np.load(p) for p in sorted(f.glob("q*.npy"))])  # noqa: E731
    assert np.array_equal(chunks(folder), chunks(clean_folder))  # bitwise the same transfer set
    assert not list(folder.glob(".*.tmp"))


def fit(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    base = [sys.executable, str(REPO / "main.py"), "fit", "--config",
            str(CONFIGS / "victim/digits_cnn.yaml"), "--trainer.max_epochs", "3",
            "--trainer.enable_progress_bar", "false"]  # fmt: skip
    cwd.mkdir(exist_ok=True)
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "WANDB_MODE": "offline"}
    return subprocess.run([*base, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=env)  # fmt: skip


def test_training_killed_mid_epoch_resumes_to_the_same_result(tmp_path):
    reference = fit([], tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-2000:]

    killer = ["--trainer.callbacks+=tests.kill_switch.KillMidEpoch",
              "--trainer.callbacks.epoch=1", "--trainer.callbacks.batch=5"]  # fmt: skip
    killed = fit(killer, tmp_path / "killed")
    assert killed.returncode == -signal.SIGKILL
    last = tmp_path / "killed/runs/victim/digits_cnn/checkpoints/last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 0  # the last finished epoch
    resumed = fit(["--ckpt_path", str(last)], tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    weights = [torch.load(p / "runs/victim/digits_cnn/checkpoints/last.ckpt", weights_only=True)
               ["state_dict"] for p in (tmp_path / "reference", tmp_path / "killed")]  # fmt: skip
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


def test_same_seed_same_metrics_on_cpu(tmp_path):
    runs = [fit(["--trainer.max_epochs", "1"], tmp_path / f"run{i}") for i in range(2)]
    metrics = [json.dumps(sorted(line for line in r.stdout.splitlines() if "test/acc " in line))
               for r in runs]  # fmt: skip
    assert metrics[0] == metrics[1] and "test/acc" in metrics[0]
