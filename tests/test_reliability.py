"""Kills and resumes with a real SIGKILL of a subprocess, and determinism on CPU."""

import csv
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from knockoff_lab.core.fragments import read_config
from tests.conftest import CONFIGS, REPO

BUILD = textwrap.dedent("""
    import sys, time
    from knockoff_lab.api import PredictionAPI
    from datamodules import CropsPoolDataModule, DigitsDataModule, TransferSetDataModule

    victim, cache, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    original = PredictionAPI.answer

    def answer(self, images, *args):  # slowed down, and every answer is logged
        time.sleep(delay)
        answers = original(self, images, *args)
        with open(cache + ".answered", "a") as log:
            log.write(f"{len(images)}\\n")
        return answers

    PredictionAPI.answer = answer
    api = PredictionAPI(victim, posterior_cache=None, ledger=None)
    data = TransferSetDataModule(api=api, pool=CropsPoolDataModule(size=400),
                                 victim_data=DigitsDataModule(), budget=320, cache_dir=cache,
                                 query_batch_size=32)
    data.setup()
    data.grow_to(0)
    print(data.folder)
""")


def run_build(victim: Path, cache: str, delay: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", BUILD, str(victim), cache, str(delay)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_sigkill_during_transfer_set_build_then_rerun(victim_ckpt, tmp_path):
    cache = str(tmp_path / "killed")
    proc = run_build(victim_ckpt, cache, delay=0.3)
    deadline = time.time() + 120
    while len(list(Path(cache).rglob("a*-*.npy"))) < 3 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(list(Path(cache).rglob("a*-*.npy"))) < 10  # killed half-way
    assert not [p for p in Path(cache).rglob("a*-*.npy") if p.stat().st_size == 0]

    resumed = run_build(victim_ckpt, cache)
    folder = Path(resumed.communicate(timeout=300)[0].strip().splitlines()[-1])
    clean = run_build(victim_ckpt, str(tmp_path / "clean"))
    clean_folder = Path(clean.communicate(timeout=300)[0].strip().splitlines()[-1])

    answered = sum(int(n) for n in Path(cache + ".answered").read_text().split())
    assert 320 <= answered <= 320 + 32  # at most the one batch in flight at the kill is re-asked
    chunks = lambda f: np.concatenate([np.load(p) for p in sorted(f.rglob("a*-*.npy"))])  # noqa: E731
    assert np.array_equal(chunks(folder), chunks(clean_folder))  # bitwise the same transfer set
    assert not list(folder.rglob(".*.tmp"))


VICTIM = ["--config", str(CONFIGS / "victim/digits_cnn.yaml"), "--trainer.max_epochs", "3"]


def fit(args: list[str], cwd: Path, base: list[str] = VICTIM) -> subprocess.CompletedProcess:
    """`python main.py fit` in a fresh process in `cwd` (its own runs/ folder)."""
    base = [
        sys.executable,
        str(REPO / "main.py"),
        "fit",
        *base,
        "--trainer.enable_progress_bar",
        "false",
    ]
    cwd.mkdir(exist_ok=True)
    env = {
        "PYTHONPATH": str(REPO),
        "PATH": "/usr/bin:/bin",
        "WANDB_MODE": "offline",
        "KNOCKOFF_TRUSTED_MODULES": "tests",
    }
    return subprocess.run(
        [*base, *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env
    )


def test_training_killed_mid_epoch_resumes_to_the_same_result(tmp_path):
    reference = fit([], tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-2000:]

    killer = [
        "--trainer.callbacks+=tests.kill_switch.KillMidEpoch",
        "--trainer.callbacks.epoch=1",
        "--trainer.callbacks.batch=5",
    ]
    killed = fit(killer, tmp_path / "killed")
    assert killed.returncode == -signal.SIGKILL
    last = tmp_path / "killed/runs/victim/digits_cnn/checkpoints/last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 0  # the last finished epoch
    resumed = fit(["--ckpt_path", str(last)], tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    weights = [
        torch.load(p / "runs/victim/digits_cnn/checkpoints/last.ckpt", weights_only=True)[
            "state_dict"
        ]
        for p in (tmp_path / "reference", tmp_path / "killed")
    ]
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


def test_an_attack_killed_between_rounds_resumes_to_the_same_surrogate(victim_ckpt, tmp_path):
    """Three rounds of two epochs; killed in epoch 3, after round 1 was asked. The resumed fit
    reads the rounds its checkpoint had back from the cache (asking nothing twice) and ends
    with the weights and the transfer set of an uninterrupted run."""
    toy = str(REPO / "tests/toy_strategy.yaml")
    attack = [
        "--config",
        toy,
        "--data.init_args.api.init_args.victim",
        str(victim_ckpt),
        "--data.init_args.budget",
        "150",
        "--data.init_args.pool.init_args.size",
        "300",
        "--data.init_args.api.init_args.ledger",
        "books.sqlite",
        "--trainer.max_epochs",
        "6",
        "--model.init_args.lr_scheduler.init_args.T_max",
        "6",
        "--trainer.limit_test_batches",
        "1",
    ]

    def attack_fit(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
        config = ["--config", str(CONFIGS / "surrogate/digits_natural_probs.yaml")]
        return fit([*config, *attack, *args], cwd, base=[])

    reference = attack_fit([], tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-2000:]
    killer = [
        "--trainer.callbacks+=tests.kill_switch.KillMidEpoch",
        "--trainer.callbacks.epoch=3",
        "--trainer.callbacks.batch=1",
    ]
    assert attack_fit(killer, tmp_path / "killed").returncode == -signal.SIGKILL
    run = tmp_path / "killed/runs/surrogate/digits_natural_probs+toy_strategy"
    last = run / "checkpoints/last.ckpt"
    state = torch.load(last, weights_only=True)
    assert state["TransferSetDataModule"]["rounds_done"] == 1 + (state["epoch"] + 1) // 2
    resumed = attack_fit(["--ckpt_path", str(last)], tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    import sqlite3

    books = sqlite3.connect(tmp_path / "killed/books.sqlite")
    assert books.execute("SELECT SUM(asked) FROM clients").fetchone()[0] == 150  # never twice
    final = [
        torch.load(
            p / "runs/surrogate/digits_natural_probs+toy_strategy/checkpoints/last.ckpt",
            weights_only=True,
        )
        for p in (tmp_path / "reference", tmp_path / "killed")
    ]
    for key in final[0]["state_dict"]:
        assert torch.equal(final[0]["state_dict"][key], final[1]["state_dict"][key]), key
    assert final[1]["TransferSetDataModule"]["rounds_done"] == 3


def test_same_seed_same_metrics_on_cpu(tmp_path):
    runs = [fit(["--trainer.max_epochs", "1"], tmp_path / f"run{i}") for i in range(2)]
    metrics = [
        json.dumps(sorted(line for line in r.stdout.splitlines() if "test/acc " in line))
        for r in runs
    ]
    assert metrics[0] == metrics[1] and "test/acc" in metrics[0]


EMBED = textwrap.dedent("""
    import io, os, signal, sys
    import numpy as np
    from tests.test_reliability import cache_embeddings

    weights, cache, kill = sys.argv[1], sys.argv[2], sys.argv[3] == "kill"
    save = np.save

    def saving(file, array, **kwargs):  # with `kill`: SIGKILL half-way through the features file
        if kill and "features" in getattr(file, "name", ""):
            data = io.BytesIO()
            save(data, array, **kwargs)
            file.write(data.getvalue()[: len(data.getvalue()) // 2])
            file.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        save(file, array, **kwargs)

    np.save = saving
    print(cache_embeddings(weights, cache))
""")


@pytest.fixture
def one_thread(monkeypatch: pytest.MonkeyPatch):
    """One torch thread here and in subprocesses: runs in and out of this process compare
    bitwise, and no OpenMP thread spins waiting for a busy core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(threads)


def cache_embeddings(weights: str, cache: str) -> int:
    """Fit a frozen-features detector (embeddings cached under `cache`) on small images; how
    many batches it embedded (0: all read from the cache)."""
    from lightning.pytorch import Trainer

    from datamodules import CropsPoolDataModule, DigitsDataModule, InOutDataModule
    from lightning_modules import FrozenFeaturesDetector

    batches = []
    model = FrozenFeaturesDetector("digits_cnn", weights=weights, folds=2, Cs=2, cache_dir=cache)
    model.embed = lambda images: batches.append(1) or FrozenFeaturesDetector.embed(model, images)
    data = InOutDataModule(
        DigitsDataModule(image_size=16),
        CropsPoolDataModule(size=100, image_size=16, seed=1),
        CropsPoolDataModule("other", size=20, image_size=16),
        batch_size=128,
    )
    Trainer(
        max_epochs=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(model, data)
    return len(batches)


def test_sigkill_while_writing_cached_embeddings_then_rerun(tmp_path, one_thread):
    from knockoff_lab.nets.networks import build_network

    weights, cache = tmp_path / "backbone.pt", tmp_path / "killed"
    torch.save(build_network("digits_cnn", 10).state_dict(), weights)
    killed = subprocess.run(
        [sys.executable, "-c", EMBED, str(weights), str(cache), "kill"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not list(cache.rglob("train_features.npy"))  # nothing taken for complete
    [partial] = cache.rglob(".train_features.npy.*.tmp")  # the features file, cut half-way
    cut = partial.read_bytes()
    assert cut

    assert cache_embeddings(str(weights), str(cache)) > 0  # embedded again, not read from `cut`
    assert not list(cache.rglob("*.tmp"))
    [done] = cache.rglob("train_features.npy")
    assert done.read_bytes().startswith(cut)  # what the killed process had computed
    assert cache_embeddings(str(weights), str(tmp_path / "clean")) > 0  # uninterrupted
    for name in ("train_features.npy", "train_labels.npy"):
        [done], [reference] = cache.rglob(name), (tmp_path / "clean").rglob(name)
        assert np.array_equal(np.load(done), np.load(reference)), name  # bitwise the same
    assert cache_embeddings(str(weights), str(cache)) == 0  # complete: read, not recomputed


def csv_rows(path: Path) -> list[dict[str, str]]:
    """A metrics.csv's rows, each without its empty cells."""
    with open(path, newline="") as file:
        return [{k: v for k, v in row.items() if v} for row in csv.DictReader(file)]


def test_sigkill_mid_stage_of_reproduce_then_rerun(
    tmp_path, victim_ckpt, monkeypatch, capsys, one_thread
):
    """Twin surrogate stages; the second one's YAML adds a one-shot kill switch, so `python
    main.py reproduce` is SIGKILLed in that stage's epoch 1; the rerun resumes the stage from its
    last.ckpt (it trains epoch 1 only), and the stage ends exactly as its uninterrupted twin,
    its metrics.csv included."""
    import yaml

    from knockoff_lab.pipeline.reproduce import reproduce_main
    from lightning_modules import Surrogate

    config = read_config(CONFIGS / "surrogate/digits_natural_probs.yaml")  # fragments inlined
    config["trainer"]["callbacks"].append(
        {
            "class_path": "tests.kill_switch.KillMidEpoch",
            "init_args": {"epoch": 1, "batch": 1, "once": str(tmp_path / "killed.once")},
        }
    )
    (tmp_path / "killed.yaml").write_text(yaml.safe_dump(config))
    small = {
        "data.init_args.api.init_args.victim": str(victim_ckpt),
        "data.init_args.budget": 100,
        "data.init_args.pool.init_args.size": 150,
        "data.init_args.batch_size": 16,
        "trainer.max_epochs": 2,
        "model.init_args.lr_scheduler.init_args.T_max": 2,
        "trainer.limit_val_batches": 1,
        "trainer.limit_test_batches": 2,
        "trainer.accelerator": "cpu",
        # photo crops: with digit-like ones the in-process resume differs from the
        # subprocess twin by ~1e-3 in the weights (not root-caused; pools are identical)
        "data.init_args.pool.init_args.style": "photo",
    }
    preset = {
        "output_dir": "out",
        "set": small,
        "stages": [
            {"name": "twin", "config": str(CONFIGS / "surrogate/digits_natural_probs.yaml")},
            {"name": "killed", "config": str(tmp_path / "killed.yaml")},
        ],
    }
    (tmp_path / "preset.yaml").write_text(yaml.safe_dump(preset))

    command = [sys.executable, str(REPO / "main.py"), "reproduce", "--config", "preset.yaml"]
    env = {
        "PYTHONPATH": str(REPO),
        "PATH": "/usr/bin:/bin",
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
        "KNOCKOFF_TRUSTED_MODULES": "tests",
    }
    first = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env
    )
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    stages = Path("out/stages")
    [twin], [killed] = stages.glob("twin-*"), stages.glob("killed-*")
    last = killed / "checkpoints/last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 0  # killed in epoch 1
    assert (twin / "result.json").exists() and not (killed / "result.json").exists()

    trained: list[tuple[int, int]] = []  # (epoch, batch) of every step of the rerun
    step = Surrogate.training_step
    monkeypatch.setattr(
        Surrogate,
        "training_step",
        lambda self, batch, i: trained.append((self.current_epoch, i)) or step(self, batch, i),
    )
    reproduce_main(["--config", "preset.yaml"])
    log = capsys.readouterr().out
    assert "twin: cached" in log and f"killed: resuming from {last}" in log
    assert trained == [(1, i) for i in range(6)]  # epoch 1 (90 queries / 16) and nothing before
    results = [json.loads((stage / "result.json").read_text()) for stage in (twin, killed)]
    assert results[0]["metrics"] == results[1]["metrics"] and "test/acc" in results[0]["metrics"]
    weights = [
        torch.load(stage / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
        for stage in (twin, killed)
    ]
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
    logged = [csv_rows(stage / "metrics.csv") for stage in (twin, killed)]
    assert logged[0] == logged[1]  # epoch 0's rows kept through the resume, epoch 1's once
    assert {row["epoch"] for row in logged[1] if "val/acc" in row} == {"0", "1"}
