"""Stages of `python main.py reproduce`: each one is an ordinary experiment YAML run through the
same LightningCLI as `python main.py fit`, so a paper-scale preset and the embedded one differ
only in config.

A stage's folder is named by a key over everything that determines its result (the YAML's text,
the settings applied to it, the keys of the stages it reads from). `result.json` is written last,
atomically: a folder with it is finished and reused; a folder without it is resumed from its
`last.ckpt`. A changed setting changes the keys of that stage and of the stages downstream of it,
and nothing else.

The console shows one line per stage event (cached / running / resuming / done / failed); what
Lightning prints, logs and warns while a stage runs goes to the stage's `stdout.log`, and also
to the console with `verbose`.
"""

import contextlib
import hashlib
import json
import logging
import re
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import yaml

from core.atomic import atomic_write_text
from core.errors import ConfigError
from lightning_modules.loggers import LIGHTNING_LOGGERS


@dataclass
class Row:
    """Where a stage's metrics go in results.csv: one row per (table, victim, setting, metric)."""

    table: str
    victim: str
    setting: str
    metrics: dict[str, str]  # results.csv metric name -> logged metric name


@dataclass
class Stage:
    name: str
    config: str  # an experiment YAML, as for `python main.py fit --config`
    command: Literal["fit", "test"] = "fit"
    set: dict[str, Any] = field(
        default_factory=dict
    )  # dotted key -> value, e.g. trainer.max_epochs
    inputs: dict[str, str] = field(
        default_factory=dict
    )  # dotted key -> upstream stage's checkpoint
    rows: list[Row] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Checked when the preset is read: a stage's name is a folder under `output_dir`
        (never outside it: `--force` deletes there)."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name) or ".." in self.name:
            raise ConfigError(f"stage name {self.name!r} must be letters, digits, '-', '_' or "
                              "'.' (it names a folder under output_dir)")  # fmt: skip


def set_dotted(config: dict, key: str, value: Any) -> None:
    """Set `key` (dotted; a number indexes a list, as in `defences.0.init_args.detector`)."""
    node = config
    *parents, last = key.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def stage_key(stage: Stage, settings: dict[str, Any], upstream: dict[str, str]) -> str:
    text = Path(stage.config).read_text()
    blob = json.dumps([text, stage.command, settings, upstream], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


class Tee:
    """A text stream writing to several: a stage's log file and, when verbose, the console."""

    def __init__(self, *streams: IO[str]):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def stage_output(log_file: Path, verbose: bool = False) -> Iterator[None]:
    """Route a stage's prints, warnings and Lightning's log messages ("GPU available", the test
    table, ...) into `log_file` (line-buffered, so a crash keeps what came before), and also to
    the console when `verbose`. Lightning's loggers hold their own handle on stderr, so they are
    re-pointed here and restored afterwards."""
    with open(log_file, "w", buffering=1) as log:
        out = Tee(log, sys.stdout) if verbose else log
        err = Tee(log, sys.stderr) if verbose else log
        handler = logging.StreamHandler(err)
        loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
        saved = [(logger.handlers, logger.propagate) for logger in loggers]
        for logger in loggers:
            logger.handlers, logger.propagate = [handler], False
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                yield
        finally:
            for logger, (handlers, propagate) in zip(loggers, saved, strict=True):
                logger.handlers, logger.propagate = handlers, propagate


class StageRunner:
    """Runs stages in order into `output_dir/stages/<name>-<key>/`, reusing finished ones."""

    def __init__(
        self,
        output_dir: Path,
        settings: dict[str, Any],
        force: bool = False,
        verbose: bool = False,
    ):
        self.output_dir, self.settings, self.force = output_dir, settings, force
        self.verbose = verbose
        self.done: dict[str, dict] = {}  # stage name -> result

    def folder(self, stage: Stage) -> Path:
        upstream = {key: self.done[name]["key"] for key, name in stage.inputs.items()}
        key = stage_key(stage, {**self.settings, **stage.set}, upstream)
        return self.output_dir / "stages" / f"{stage.name}-{key}"

    def effective_config(self, stage: Stage, folder: Path) -> dict:
        """The stage's YAML with the pipeline's settings, inputs, logger and checkpoint folder."""
        config = yaml.safe_load(Path(stage.config).read_text())
        for key, value in {**self.settings, **stage.set}.items():
            set_dotted(config, key, value)
        for key, name in stage.inputs.items():
            set_dotted(config, key, self.done[name]["checkpoint"])
        trainer = config.setdefault("trainer", {})
        trainer.update(default_root_dir=str(folder), enable_progress_bar=False,
                       enable_model_summary=False)  # fmt: skip
        trainer["logger"] = {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(folder), "name": "", "version": ""},
        }
        checkpoints = [
            c for c in trainer.get("callbacks", []) if "ModelCheckpoint" in c["class_path"]
        ]
        for callback in checkpoints:
            callback.setdefault("init_args", {}).update(
                dirpath=str(folder / "checkpoints"), filename="best", save_last=True,
                enable_version_counter=False,
            )  # fmt: skip
        return config

    def run(self, stage: Stage, position: str) -> dict:
        if missing := [name for name in stage.inputs.values() if name not in self.done]:
            raise ConfigError(
                f"stage {stage.name!r} reads {missing}, which run later or not at all"
            )
        folder = self.folder(stage)
        result_file = folder / "result.json"
        if self.force and folder.exists():
            shutil.rmtree(folder)
        if result_file.exists():
            print(f"{position} {stage.name}: cached ({folder})", flush=True)
            self.done[stage.name] = json.loads(result_file.read_text())
            return self.done[stage.name]
        folder.mkdir(parents=True, exist_ok=True)
        config_file = folder / "config.yaml"
        atomic_write_text(config_file, yaml.safe_dump(self.effective_config(stage, folder)))
        args = [stage.command, "--config", str(config_file)]
        last = folder / "checkpoints" / "last.ckpt"
        if stage.command == "fit" and last.exists():
            print(f"{position} {stage.name}: resuming from {last}", flush=True)
            args += ["--ckpt_path", str(last)]
        else:
            print(f"{position} {stage.name}: running {stage.command} {stage.config}", flush=True)
        from pipeline.cli import cli_main

        start = time.time()
        try:
            with stage_output(folder / "stdout.log", self.verbose):
                cli = cli_main(args)
        except BaseException:
            print(f"{position} {stage.name}: FAILED after {time.time() - start:.1f} s; its "
                  f"output: {folder / 'stdout.log'}", flush=True)  # fmt: skip
            raise
        metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if v.numel() == 1}
        saved = [folder / "checkpoints" / name for name in ("best.ckpt", "last.ckpt")]
        result = {
            "key": folder.name.rsplit("-", 1)[1],
            "folder": str(folder),
            "checkpoint": next((str(p) for p in saved if p.exists()), None),
            "metrics": metrics,
        }
        atomic_write_text(result_file, json.dumps(result, indent=1))
        shown = ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if "class" not in k)
        print(f"{position} {stage.name}: done in {time.time() - start:.1f} s  {shown}", flush=True)
        self.done[stage.name] = result
        return result
