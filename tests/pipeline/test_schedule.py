"""`reproduce --jobs N`: stages side by side in processes of their own, in the order their inputs
allow, their results in the preset's order, and the same numbers as one at a time."""

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from knockoff_lab.core.errors import ConfigError
from knockoff_lab.core.fragments import read_config
from knockoff_lab.pipeline.reproduce import reproduce_main
from knockoff_lab.pipeline.schedule import Run, epochs, longest_chain, run_stages, side_by_side
from knockoff_lab.pipeline.stages import Stage, StageRunner
from tests.conftest import CONFIGS
from tests.pipeline.test_reproduce import tiny_config

VICTIM = str(CONFIGS / "victim/digits_cnn.yaml")
REPO = Path(__file__).resolve().parents[2]


class Clock:
    """A runner that records when each stage ran and in which process, and leaves a file named
    after each stage it finished in `marks`; `naps` sets how long each takes, and a stage named
    `fails` raises (the workers unpickle it from this module)."""

    def __init__(self, naps: dict[str, float], marks: Path):
        self.naps, self.marks, self.done = naps, marks, {}

    def finished(self, stage: Stage) -> bool:
        return False

    def run(self, stage: Stage, position: str, shown: bool) -> dict:
        start = time.monotonic()
        time.sleep(self.naps.get(stage.name, 0.0))
        if stage.name == "fails":
            raise ConfigError("stage fails: on purpose")
        (self.marks / stage.name).touch()
        return {"name": stage.name, "pid": os.getpid(), "start": start, "end": time.monotonic()}


def runs(*stages: tuple[str, dict[str, str]]) -> list[Run]:
    return [Run(Stage(name, VICTIM, inputs=inputs), f"[{name}]", True) for name, inputs in stages]


def test_stages_run_side_by_side_after_their_inputs_and_report_in_order(tmp_path):
    clock = Clock({"first": 1.0, "second": 0.2, "reader": 0.0}, tmp_path)
    results = run_stages(
        clock, runs(("first", {}), ("second", {}), ("reader", {"x": "first"})), jobs=2
    )
    first, second, reader = results
    assert [r["name"] for r in results] == ["first", "second", "reader"]  # not as they finished
    assert first["pid"] != second["pid"] and second["start"] < first["end"]  # side by side
    assert reader["start"] >= first["end"]  # not when a slot freed, but after what it reads
    assert set(clock.done) == {"first", "second", "reader"}


def test_the_ready_stage_heading_the_longest_chain_of_epochs_starts_first(tmp_path):
    """Two slots: `short` (5 epochs) starts with `longer` (80), ahead of `long` (22), because
    `reader` (80) waits for it; `reader` then goes before `long`, and `long` before `tied` (5),
    which comes last in the preset too; the results keep the preset's order."""
    naps = {"short": 0.2, "reader": 0.3, "long": 0.3, "longer": 1.5, "tied": 0.1}
    stages = [("short", {}), ("reader", {"x": "short"}), ("long", {}), ("longer", {}), ("tied", {})]
    planned = runs(*stages)
    for run, count in zip(planned, [5, 80, 22, 80, 5], strict=True):
        run.epochs = count
    assert longest_chain(planned) == [85, 80, 22, 80, 5]
    results = {r["name"]: r for r in run_stages(Clock(naps, tmp_path), planned, jobs=2)}
    assert list(results) == [name for name, _ in stages]
    start = {name: result["start"] for name, result in results.items()}
    assert start["long"] >= results["short"]["end"]  # not in short's place at the outset
    assert start["reader"] < start["long"] < start["tied"]


def test_a_stage_s_epochs_are_read_from_its_trainer():
    assert epochs({"trainer": {"max_epochs": 22}}) == 22
    assert epochs({"trainer": {}}) == 1000  # Lightning's default
    assert epochs({"trainer": {"max_steps": 50}}) == 0  # bounded by steps: unknown
    assert epochs({}) == 1000


def test_a_failure_stops_new_stages_and_lets_the_running_ones_finish(tmp_path):
    clock = Clock({"slow": 1.5, "fails": 0.2}, tmp_path)
    with pytest.raises(ConfigError, match="stage fails: on purpose"):
        run_stages(clock, runs(("slow", {}), ("fails", {}), ("later", {})), jobs=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slow"]  # finished; later never began


def test_side_by_side_gives_the_numbers_of_one_at_a_time(tmp_path, monkeypatch):
    """At a fixed thread count, two jobs write the report of one job byte for byte (two
    surrogate seeds train at once; their results keep the preset's order)."""
    config = tiny_config(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--config", str(config), "--seeds", "2", "--threads", "1"]
    reproduce_main([*common, "--jobs", "1", "--output_dir", str(one)])
    reproduce_main([*common, "--jobs", "2", "--output_dir", str(two)])
    assert (one / "results.csv").read_bytes() == (two / "results.csv").read_bytes()
    assert (one / "tables.md").read_text() == (two / "tables.md").read_text()
    assert sorted(p.name for p in (one / "stages").iterdir()) == sorted(
        p.name for p in (two / "stages").iterdir()
    )
    stamps = {p: p.stat().st_mtime_ns for p in (two / "stages").glob("*/result.json")}
    with monkeypatch.context() as patch:  # a rerun reads every stage in place: no process
        patch.setattr(ProcessPoolExecutor, "submit", None)
        reproduce_main([*common, "--jobs", "2", "--output_dir", str(two)])
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert (one / "results.csv").read_bytes() == (two / "results.csv").read_bytes()


def test_the_thread_count_is_part_of_a_stages_key(tmp_path):
    stage = Stage("victim", VICTIM)
    keys = {StageRunner(tmp_path, {}, threads=n).folder(stage).name for n in (None, 1, 2)}
    assert len(keys) == 3


def test_a_multi_device_stage_cannot_run_side_by_side(tmp_path):
    config = yaml.safe_load(tiny_config(tmp_path).read_text())
    config["stages"][0]["set"] = {"trainer.devices": 2, "trainer.strategy": "ddp"}
    (path := tmp_path / "ddp.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="stage victim trains on devices=2.*set jobs: 1"):
        reproduce_main(["--config", str(path), "--jobs", "2"])
    assert not (tmp_path / "out" / "stages").exists()


@pytest.mark.parametrize(
    "jobs, threads, cores, expected",
    [
        (None, None, 8, (1, None)),
        (None, 2, 8, (4, 2)),
        (None, 16, 8, (1, 16)),
        (4, None, 8, (4, 2)),
        (16, None, 8, (16, 1)),
        (1, None, 8, (1, None)),
        (3, 3, 8, (3, 3)),
    ],
)
def test_jobs_fill_the_cores_the_threads_leave(monkeypatch, jobs, threads, cores, expected):
    monkeypatch.setattr("knockoff_lab.pipeline.schedule.usable_cores", lambda: cores)
    assert side_by_side(jobs, threads) == expected


def test_zero_jobs_or_threads_is_a_clear_error():
    with pytest.raises(ConfigError, match="jobs and threads must be >= 1, got jobs=0"):
        side_by_side(0, None)
    with pytest.raises(ConfigError, match="threads=0"):
        side_by_side(None, 0)


def test_a_stage_runs_on_the_runners_thread_count(tmp_path, monkeypatch):
    seen = []

    def fake_cli(args):
        seen.append(torch.get_num_threads())
        return SimpleNamespace(trainer=SimpleNamespace(callback_metrics={}))

    monkeypatch.setattr("knockoff_lab.pipeline.stages.cli_main", fake_cli)
    before = torch.get_num_threads()
    for threads in (1, 3):
        StageRunner(tmp_path, {}, threads=threads).run(Stage("victim", VICTIM), "[1/1]")
    assert seen == [1, 3] and torch.get_num_threads() == before


def test_a_killed_stage_process_is_a_clear_error_and_a_rerun_resumes(
    tmp_path, monkeypatch, victim_ckpt, capfd
):
    """A worker SIGKILLed in epoch 1 of its stage (tests/kill_switch.py, as the OOM killer would):
    one line naming the stages in flight, their folders kept; the rerun resumes the killed stage
    from its last.ckpt and it ends as its uninterrupted twin."""
    config = read_config(CONFIGS / "surrogate/digits_natural_probs.yaml")
    switch = {"epoch": 1, "batch": 1, "once": str(tmp_path / "killed.once")}
    config["trainer"]["callbacks"].append(
        {"class_path": "tests.kill_switch.KillMidEpoch", "init_args": switch}
    )
    (tmp_path / "killed.yaml").write_text(yaml.safe_dump(config))
    small = {
        "data.init_args.api.init_args.victim": str(victim_ckpt),
        "data.init_args.budget": 100,
        "data.init_args.pool.init_args.size": 150,
        "data.init_args.pool.init_args.style": "photo",
        "trainer.max_epochs": 2,
        "model.init_args.lr_scheduler.init_args.T_max": 2,
        "trainer.limit_test_batches": 2,
    }
    stages = [
        {"name": "twin", "config": str(CONFIGS / "surrogate/digits_natural_probs.yaml")},
        {"name": "killed", "config": str(tmp_path / "killed.yaml")},
    ]
    preset = {"output_dir": str(tmp_path / "out"), "set": small, "stages": stages}
    (path := tmp_path / "preset.yaml").write_text(yaml.safe_dump(preset))
    monkeypatch.setenv("KNOCKOFF_TRUSTED_MODULES", "tests")
    args = ["--config", str(path), "--jobs", "2", "--threads", "1"]
    with pytest.raises(RuntimeError, match=r"stages .*killed.*: a process ended abruptly"):
        reproduce_main(args)
    [killed] = (tmp_path / "out/stages").glob("killed-*")
    assert (killed / "checkpoints/last.ckpt").exists() and not (killed / "result.json").exists()
    capfd.readouterr()
    reproduce_main(args)
    assert "killed: resuming from" in capfd.readouterr().out  # printed by its worker
    twin = next((tmp_path / "out/stages").glob("twin-*"))
    results = [json.loads((stage / "result.json").read_text()) for stage in (twin, killed)]
    assert results[0]["metrics"] == results[1]["metrics"]


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc (Linux)")
def test_a_killed_run_leaves_no_worker_training_on(tmp_path):
    """SIGKILL `main.py reproduce --jobs 2` while its workers train: they die with it, so a
    rerun never trains a stage into a folder an orphan still writes."""
    config = yaml.safe_load(tiny_config(tmp_path).read_text())
    for stage in config["stages"][1:]:  # the surrogates train long enough to be killed
        stage["set"].update({"trainer.max_epochs": 50, "trainer.limit_train_batches": 50})
    (path := tmp_path / "long.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "main.py", "reproduce", "--config", str(path), "--jobs", "2"]
    parent = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "out/stages").glob("knockoff-*/config.yaml")):
            assert time.monotonic() < deadline and parent.poll() is None, "no stage started"
            time.sleep(0.2)
        children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()
        workers = [int(pid) for pid in children]
        assert workers and all(alive(pid) for pid in workers)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in workers)
    finally:
        parent.kill()
