"""Stages side by side: `reproduce --jobs N` runs up to N stages at once, each in a process of its
own, a stage starting as soon as the stages it reads (`Stage.inputs`) have finished.

Why processes: an embedded stage trains a small network on 16 px images, which uses a second
torch thread poorly (its Python, Lightning's loop included, runs on one), so on 2 cores two
stages on one thread each finish sooner than the same two one after the other on both
(`benchmarks/side_by_side.py`: x0.82). Why `threads`: a CPU
stage's numbers depend on its torch thread count (the reduction order), so a preset that fixes
`threads` gets the same numbers from any `jobs` on any number of cores; the thread count is part
of every stage's key (`StageRunner.varied`), so a cached stage is reused only at the count it
ran with.

Each stage writes its folder as it does alone (atomically, resumable), and the caches the stages
share are safe across processes (the transfer set's build lock, the API's ledger, one file per
batch in the posterior cache), so a killed run resumes as a serial one does. Results come back in
the preset's order, so the report is the same whatever finished first.
"""

import ctypes
import multiprocessing
import os
import signal
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import torch

from knockoff_lab.core.errors import ConfigError
from knockoff_lab.pipeline.stages import Stage, StageRunner


@dataclass
class Run:
    stage: Stage
    position: str  # "[ 3/40]", for the console
    shown: bool  # the report shows its figures
    epochs: int = 1  # its length, as the scheduler reckons it (`longest_chain`)


def epochs(config: dict) -> int:
    """The epochs a stage's config trains for, the scheduler's measure of how long it runs:
    `trainer.max_epochs`, else Lightning's default 1000, or 0 (unknown) where `max_steps` bounds
    it instead."""
    trainer = config.get("trainer") or {}
    if trainer.get("max_epochs") is not None:
        return int(trainer["max_epochs"])
    return 1000 if trainer.get("max_steps", -1) == -1 else 0


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def side_by_side(jobs: int | None, threads: int | None) -> tuple[int, int | None]:
    """(jobs, threads per stage): given `threads` and no `jobs`, as many jobs as the cores hold;
    given `jobs` > 1 and no `threads`, the cores shared among them; neither, one job at torch's
    own thread count (None)."""
    if jobs is not None and jobs < 1 or threads is not None and threads < 1:
        raise ConfigError(f"jobs and threads must be >= 1, got jobs={jobs}, threads={threads}")
    if jobs is None:
        return (max(1, usable_cores() // threads) if threads else 1), threads
    if jobs > 1 and threads is None:
        return jobs, max(1, usable_cores() // jobs)
    return jobs, threads


def check_single_process(configs: dict[str, dict]) -> None:
    """Side by side, a stage (by name, its config) must train in its own process alone: DDP and
    multi-device strategies launch processes of their own, re-running the command line.
    `devices: auto` is one device on the CPU, or where at most one GPU is visible."""
    gpus = torch.cuda.device_count()
    for name, config in configs.items():
        trainer = config.get("trainer") or {}
        devices, accelerator = trainer.get("devices", "auto"), trainer.get("accelerator", "auto")
        one = str(devices) == "1" or (devices == "auto" and (accelerator == "cpu" or gpus <= 1))
        if not one or trainer.get("num_nodes", 1) != 1 or trainer.get("strategy", "auto") != "auto":
            raise ConfigError(
                f"stage {name} trains on devices={devices}, num_nodes="
                f"{trainer.get('num_nodes', 1)}, strategy={trainer.get('strategy', 'auto')}: "
                "jobs > 1 runs each stage in a process of its own on one device; set jobs: 1"
            )


def die_with(parent: int) -> None:
    """In a worker, first: killed when the parent process dies (Linux), so a killed run leaves
    no orphan still training a stage that the rerun would train into the same folder."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before that
        os._exit(1)


def run_one(runner: StageRunner, upstream: dict[str, dict], run: Run) -> dict:
    """In a worker: `run` with the results of the stages it reads."""
    runner.done = upstream
    return runner.run(run.stage, run.position, run.shown)


def longest_chain(runs: list[Run]) -> list[int]:
    """Each run's epochs plus the most epochs of any chain of runs reading it, in turn (list
    scheduling's critical path). Every run comes after the runs it reads."""
    where = {run.stage.name: index for index, run in enumerate(runs)}
    chain = [0] * len(runs)
    for index in reversed(range(len(runs))):
        chain[index] += runs[index].epochs
        for name in runs[index].stage.inputs.values():
            if (read := where.get(name)) is not None:  # else done before this run began
                chain[read] = max(chain[read], chain[index])
    return chain


def run_stages(runner: StageRunner, runs: list[Run], jobs: int = 1) -> list[dict]:
    """Every run's result, in the order of `runs`. Side by side, of the runs whose inputs are
    done the one heading the longest chain of epochs (`longest_chain`) starts first, then the
    earliest, so that long stages and the stages many wait for do not start last and leave one
    process working alone at the end. On a failure no further run starts; the runs in flight
    finish (their folders complete), then the error is raised."""
    if jobs == 1:
        return [runner.run(run.stage, run.position, run.shown) for run in runs]
    results: dict[int, dict] = {}
    chain = longest_chain(runs)
    waiting = sorted(range(len(runs)), key=lambda index: -chain[index])  # stable: ties in order
    context = multiprocessing.get_context("spawn")  # a forked torch can hang in its thread pool
    with ProcessPoolExecutor(jobs, context, die_with, (os.getpid(),)) as pool:
        running: dict[Future, int] = {}
        while waiting or running:
            for index in list(waiting):
                if len(running) == jobs:
                    break
                run, reads = runs[index], runs[index].stage.inputs.values()
                if not all(name in runner.done for name in reads):
                    continue
                waiting.remove(index)
                if runner.finished(run.stage):  # read here: no process needed
                    results[index] = runner.run(run.stage, run.position, run.shown)
                    continue
                upstream = {name: runner.done[name] for name in reads}
                running[pool.submit(run_one, runner, upstream, run)] = index
            if not running:
                if waiting:  # preflight orders the inputs: never, unless a stage reads itself
                    name = runs[waiting[0]].stage.name
                    raise ConfigError(f"stage {name} reads a stage that never runs")
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                try:
                    results[index := running.pop(future)] = future.result()
                except BrokenProcessPool:  # a worker killed (the OOM killer, a signal)
                    names = ", ".join(runs[i].stage.name for i in [index, *running.values()])
                    raise RuntimeError(
                        f"stages {names}: a process ended abruptly (killed, or out of memory); "
                        "their folders are kept: rerun to resume them"
                    ) from None
                runner.done[runs[index].stage.name] = results[index]
    return [results[index] for index in range(len(runs))]
