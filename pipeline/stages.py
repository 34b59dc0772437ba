"""Stages of `python main.py reproduce`: each one is an ordinary experiment YAML run through the
same LightningCLI as `python main.py fit`, so a paper-scale preset and the embedded one differ
only in config.

Every dotted key a stage's `set` or `inputs` (or the top-level `set`) names must be a setting of
the stage's YAML, or a parameter of the class (or Trainer) it sits under: `check_keys` refuses a
typo such as `trainer.max_epoch` when the preset is read, not hours later in the stage that reads
it. `result.json` records the checkpoint relative to its stage folder, so a rerun from another
working directory finds what the first run made.

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
import difflib
import hashlib
import importlib
import inspect
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
    seeds: int | None = None  # an attack stage's own number of seeds (None: the preset's)

    def __post_init__(self) -> None:
        """Checked when the preset is read: a stage's name is a folder under `output_dir`
        (never outside it: `--force` deletes there)."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name) or ".." in self.name:
            raise ConfigError(f"stage name {self.name!r} must be letters, digits, '-', '_' or "
                              "'.' (it names a folder under output_dir)")  # fmt: skip
        if self.seeds is not None and self.seeds < 1:
            raise ConfigError(f"stage {self.name}: seeds must be >= 1, got {self.seeds}")


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


# Top-level keys of an experiment YAML beside trainer/model/data (LightningCLI's own options).
CLI_KEYS = ("seed_everything", "trainer", "model", "data", "ckpt_path", "test_after_fit")
NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def init_parameters(cls: type) -> set[str] | None:
    """The keyword arguments `cls(...)` accepts, following `**kwargs` up the MRO as jsonargparse
    does; None if they are open-ended (a `**kwargs` that reaches no signature that ends it)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if (init := klass.__dict__.get("__init__")) is None or klass is object:
            continue
        params = list(inspect.signature(init).parameters.values())[1:]
        names |= {p.name for p in params if p.kind in NAMED}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return names
    return None


def class_of(class_path: Any) -> type | None:
    """The class a YAML's `class_path` names, imported only from the trusted packages (a config
    is code: `pipeline.cli`); None for any other, or one that does not import (the CLI names
    that itself)."""
    from pipeline.cli import trusted_modules

    if not isinstance(class_path, str) or class_path.split(".")[0] not in trusted_modules():
        return None
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def extensions(config: dict, path: list[str]) -> tuple[set[str] | None, str]:
    """(the keys a mapping at dotted `path` of an experiment YAML may gain, whose they are):
    LightningCLI's own at the top, the Trainer's under `trainer`, a class's under its
    `init_args`; None where any key goes (a `**kwargs` that ends nowhere)."""
    if not path:
        return set(CLI_KEYS), ""
    if path == ["trainer"]:
        from lightning.pytorch import Trainer

        return init_parameters(Trainer), "lightning.pytorch.Trainer"
    if path[-1] != "init_args":
        return set(), ""
    owner = config
    for part in path[:-1]:
        owner = owner[int(part)] if isinstance(owner, list) else owner[part]
    cls = class_of(owner.get("class_path"))
    return (set(), "") if cls is None else (init_parameters(cls), owner["class_path"])


def missing_setting(config: dict, key: str) -> str | None:
    """None if dotted `key` is a setting of `config` (an experiment YAML, parsed): a key it has,
    or one more parameter of the Trainer or of a class it names; else what is wrong and what
    was expected."""
    node, parts, depth = config, key.split("."), 0
    for part in parts:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            break
        depth += 1
    else:
        return None
    path, rest = parts[:depth], parts[depth:]
    if not isinstance(node, dict):
        what = f"a list of {len(node)}" if isinstance(node, list) else f"{node!r}"
        return f"{'.'.join(path)} is {what}, not a mapping with {rest[0]!r}"
    if rest[0] == "init_args" and len(rest) == 2 and "class_path" in node:
        path, rest, node = [*path, "init_args"], rest[1:], {}  # a class given no init_args yet
    elif not path and rest[0] == "trainer" and len(rest) == 2:
        path, rest, node = ["trainer"], rest[1:], {}  # a YAML with no trainer settings yet
    params, owner = extensions(config, path)
    here = ".".join(path)
    if params is None or rest[0] in params:
        if len(rest) == 1:
            return None
        whole = f"{here}.{rest[0]}" if here else rest[0]
        return (f"{whole} is not in the YAML, so {'.'.join(rest[1:])!r} has nothing to go "
                f"under; set {whole!r} as a whole")  # fmt: skip
    known = sorted({*node, *(params or ())} - {"class_path"})
    prefix = here + "." if here else ""
    if close := difflib.get_close_matches(rest[0], known, n=1):
        hint = f"did you mean {prefix + close[0]!r}?"
    elif 0 < len(known) <= 12:
        hint = f"expected one of {', '.join(prefix + k for k in known)}"
    else:
        hint = "expected a key the YAML has, or a parameter of the class it sits under"
    where = f"{here or 'the top level'}{f' (arguments of {owner})' if owner else ''}"
    return f"{where} has no {rest[0]!r}; {hint}"


def read_yaml(stage: "Stage") -> dict:
    """The stage's experiment YAML, or a one-line ConfigError naming it."""
    try:
        config = yaml.safe_load(Path(stage.config).read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"stage {stage.name}: config {stage.config} is not readable YAML: "
                          f"{' '.join(str(err).split())}") from err  # fmt: skip
    if not isinstance(config, dict):
        raise ConfigError(f"stage {stage.name}: config {stage.config} is not a mapping of "
                          f"settings (got a {type(config).__name__})")  # fmt: skip
    return config


def check_keys(stages: list["Stage"], settings: dict[str, Any], source: str) -> None:
    """A one-line ConfigError for the first key of the top-level `settings` or of a stage's
    `set` or `inputs` that is no setting of the stage's YAML (`missing_setting`): a typo would
    otherwise add a key that fails, or is ignored, when the stage finally runs."""
    for stage in stages:
        config = read_yaml(stage)
        named = [(key, "top-level set") for key in settings]
        named += [(key, "set") for key in stage.set] + [(key, "inputs") for key in stage.inputs]
        for key, where in named:
            if (problem := missing_setting(config, key)) is not None:
                raise ConfigError(f"{source}: stage {stage.name}: {where} key {key!r} is not a "
                                  f"setting of {stage.config}: {problem}")  # fmt: skip


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


def read_result(result_file: Path) -> dict:
    """A finished stage's record with its paths resolved against the folder it lies in (not
    the working directory of the run that wrote it): `folder` and `checkpoint` absolute."""
    result = json.loads(result_file.read_text())
    folder = result_file.parent.absolute()
    if (checkpoint := result.get("checkpoint")) is not None:
        relative = Path(checkpoint)
        if relative.is_absolute() or relative.parts[:1] != ("checkpoints",):  # an older record
            relative = Path("checkpoints", relative.name)  # stage checkpoints live there
        result["checkpoint"] = str(folder / relative)
    return {**result, "folder": str(folder)}


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
            self.done[stage.name] = read_result(result_file)
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
        saved = [Path("checkpoints", name) for name in ("best.ckpt", "last.ckpt")]
        record = {
            "key": folder.name.rsplit("-", 1)[1],
            "checkpoint": next((p.as_posix() for p in saved if (folder / p).exists()), None),
            "metrics": metrics,
        }  # paths relative to the folder: the record holds wherever the folder is reached from
        atomic_write_text(result_file, json.dumps(record, indent=1))
        result = read_result(result_file)
        shown = ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if "class" not in k)
        print(f"{position} {stage.name}: done in {time.time() - start:.1f} s  {shown}", flush=True)
        self.done[stage.name] = result
        return result
