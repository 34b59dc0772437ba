"""Stages of `python main.py reproduce`: each one is an ordinary experiment YAML run through the
same LightningCLI as `python main.py fit`, so a paper-scale preset and the embedded one differ
only in config. A stage's `config` may be a list: an experiment YAML, then overlays merged
over it in order, as `python main.py fit --config a.yaml --config b.yaml` merges them; its `set`
and `inputs` apply to the merged config (their keys are checked by `pipeline.keys`).
`result.json` records the checkpoint relative to its stage folder, so a rerun from another
working directory finds what the first run made.

A stage's folder is named by a key over everything that determines its result (the YAMLs' texts,
the settings applied to them, the keys of the stages it reads from). `result.json` is written
last, atomically: a folder with it is finished and reused; a folder without it is resumed from its
`last.ckpt`. A changed setting changes the keys of that stage and of the stages downstream of it,
and nothing else.

The console shows one line per stage event (cached / running / resuming / done / failed); what
Lightning prints, logs and warns while a stage runs goes to the stage's `stdout.log`, and also
to the console with `verbose`.
"""

import contextlib
import copy
import dataclasses
import hashlib
import itertools
import json
import logging
import re
import shutil
import string
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import torch
import yaml

from knockoff_lab.core.atomic import atomic_write_text
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.core.fragments import inline_value, read_config
from knockoff_lab.pipeline.cli import cli_main
from knockoff_lab.pipeline.loggers import LIGHTNING_LOGGERS
from knockoff_lab.pipeline.rewrites import caches_under, point_at_data, smoke, unshown

# A setting's value as a YAML gives it: data, never built. A `class_path` mapping stays a
# mapping until the stage's own CLI builds it (typed `Any`, the preset's parser would build it
# while reading the preset, and the stage's config could not be written).
Value = str | int | float | bool | list | dict | None


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
    config: str | list[str]  # an experiment YAML (then overlays), as for `main.py fit --config`
    command: Literal["fit", "test"] = "fit"
    # dotted key -> value, e.g. trainer.max_epochs; a path to a YAML stands for its content
    set: dict[str, Value] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)  # dotted key -> upstream stage
    rows: list[Row] = field(default_factory=list)
    seeds: int | None = None  # an attack stage's own number of seeds (None: the preset's)
    # a family of stages: placeholder -> its values (`expand`)
    foreach: dict[str, list[Value]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Checked when the preset is read: a stage's name is a folder under `output_dir`
        (never outside it: `--force` deletes there). A family is checked stage by stage."""
        if self.foreach:
            return
        self.set = leaves(self.set)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name) or ".." in self.name:
            raise ConfigError(
                f"stage name {self.name!r} must be letters, digits, '-', '_' or "
                "'.' (it names a folder under output_dir)"
            )
        if not self.configs:
            raise ConfigError(f"stage {self.name}: config names no YAML")
        if self.seeds is not None and self.seeds < 1:
            raise ConfigError(f"stage {self.name}: seeds must be >= 1, got {self.seeds}")

    @property
    def configs(self) -> list[str]:
        return [self.config] if isinstance(self.config, str) else list(self.config)

    @property
    def shown(self) -> str:
        """The YAMLs as a user would pass them: `a.yaml + overlay.yaml`."""
        return " + ".join(self.configs)

    def expand(self) -> list["Stage"]:
        """The stages of a family: one per combination of the `foreach` values, in order, every
        string of the stage (name, configs, settings, inputs, rows) formatted with them:
        `{dataset}`, or `{answer[name]}` for a value that is a mapping."""
        if not self.foreach:
            return [self]
        names, stages = list(self.foreach), []
        for values in itertools.product(*self.foreach.values()):
            given = dict(zip(names, values, strict=True))
            try:
                stage = filled(dataclasses.asdict(self), given)
            except (KeyError, IndexError) as err:
                raise ConfigError(
                    f"stage {self.name}: {err} is not one of its foreach names "
                    f"({', '.join(names)}) or their keys"
                ) from None
            rows = [Row(**row) for row in stage.pop("rows")]
            stages.append(Stage(**{**stage, "rows": rows, "foreach": {}}))
        return stages


def filled(node: Any, given: dict[str, Any]) -> Any:
    """`node` with every string formatted with `given` (keys of mappings too); a string that is
    one placeholder alone takes its value as it is (`batch_size: "{bs}"` stays a number,
    `"{m[star]}"` a boolean)."""
    if isinstance(node, str):
        if re.fullmatch(r"\{\w+(\[\w+\])*\}", node):
            return string.Formatter().get_field(node[1:-1], (), given)[0]
        return node.format(**given)
    if isinstance(node, dict):
        return {filled(k, given): filled(v, given) for k, v in node.items()}
    if isinstance(node, list):
        return [filled(v, given) for v in node]
    return node


def leaves(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`settings` as dotted keys that each set one leaf: a nested mapping (`trainer: {max_epochs:
    1}`) becomes `trainer.max_epochs: 1`, so it never replaces the rest of `trainer`. A mapping
    with a `class_path` is a whole value (it names a class), and so is an empty one."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and "class_path" not in value:
            flat.update(leaves(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


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


def merge(base: Any, overlay: Any) -> Any:
    """`overlay` over `base` as a second `--config` merges it: mappings key by key; a list or a
    value replaces, but a key ending in `+` (`callbacks+:`) appends its list to the base's; a
    mapping naming another `class_path` replaces the whole class."""
    if not (isinstance(base, dict) and isinstance(overlay, dict)):
        return copy.deepcopy(overlay)
    if "class_path" in overlay and overlay["class_path"] != base.get("class_path"):
        return copy.deepcopy(overlay)
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(key, str) and key.endswith("+") and isinstance(value, list):
            merged[key[:-1]] = [*base.get(key[:-1], []), *copy.deepcopy(value)]
        else:
            merged[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
    return merged


def read_yaml(stage: "Stage") -> dict:
    """The stage's YAMLs, fragments inlined (`core.fragments`) and merged in order, or a
    one-line ConfigError naming the file at fault."""
    merged: dict = {}
    for path in stage.configs:
        try:
            config = read_config(path) or {}
        except ConfigError as err:
            raise ConfigError(f"stage {stage.name}: {err}") from err
        if not isinstance(config, dict):
            raise ConfigError(
                f"stage {stage.name}: config {path} is not a mapping of "
                f"settings (got a {type(config).__name__})"
            )
        merged = merge(merged, config)
    return merged


def resolved(settings: dict[str, Any]) -> list[tuple[str, Any]]:
    """Dotted settings in the order they apply, fragment references read (`inline_value`): a
    key before the keys below it, so `data: configs/data/cifar10.yaml` then
    `data.init_args.batch_size: 16` sets the data block, then one leaf of it, whatever order
    they are written in."""
    ordered = sorted(settings.items(), key=lambda item: item[0].count("."))
    return [(key, inline_value(value, key)) for key, value in ordered]


def stage_key(
    stage: Stage,
    settings: dict[str, Any],
    upstream: dict[str, str],
    varied: dict[str, Any] | None = None,
) -> str:
    """What the stage runs: its configs with their fragments (an edited fragment is a new key,
    an edited comment is not), its command, settings and upstream results, and what the run
    varies beyond them (`StageRunner.varied`: a data root, a smoke run, a thread count)."""
    configs = [read_config(path) for path in stage.configs]
    what = [configs, stage.command, resolved(settings), upstream, *([varied] if varied else [])]
    blob = json.dumps(what, sort_keys=True, default=str)
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


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to `count` (None: left as it is), restored after."""
    saved = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


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
    """Runs stages in order into `output_dir/stages/<name>-<key>/`, reusing finished ones;
    their caches (transfer sets, embeddings, the API's books) in `output_dir/cache/`."""

    def __init__(
        self,
        output_dir: Path,
        settings: dict[str, Any],
        force: bool = False,
        verbose: bool = False,
        data_root: str | None = None,
        smoke: bool = False,
        threads: int | None = None,
    ):
        self.output_dir, self.settings, self.force = output_dir, settings, force
        self.verbose, self.data_root, self.smoke = verbose, data_root, smoke
        self.threads = threads  # torch threads per stage (None: torch's own count)
        self.done: dict[str, dict] = {}  # stage name -> result

    @property
    def varied(self) -> dict[str, Any]:
        """What this run changes in every stage beyond the settings (part of each stage's key)."""
        return {
            **({"data_root": str(Path(self.data_root).absolute())} if self.data_root else {}),
            **({"smoke": True} if self.smoke else {}),
            **({"threads": self.threads} if self.threads else {}),
        }

    def folder(self, stage: Stage) -> Path:
        upstream = {key: self.done[name]["key"] for key, name in stage.inputs.items()}
        key = stage_key(stage, {**self.settings, **stage.set}, upstream, self.varied)
        return self.output_dir / "stages" / f"{stage.name}-{key}"

    def stage_config(self, stage: Stage, shown: bool = True) -> dict:
        """The stage's YAML with the pipeline's settings and this run's rewrites (data root,
        caches, smoke, and `unshown` unless the report `shown` its figures:
        `pipeline.rewrites`); its inputs not yet filled in."""
        config = read_yaml(stage)
        for key, value in resolved({**self.settings, **stage.set}):
            set_dotted(config, key, value)
        if self.data_root:
            point_at_data(config, self.data_root)
        if self.smoke:
            smoke(config)
        if not shown:
            logged = [name for row in stage.rows for name in row.metrics.values()]
            unshown(config, curves=any(name.startswith(("curve/", "analysis/")) for name in logged))
        caches_under(config, self.output_dir.absolute() / "cache")
        return config

    def effective_config(self, stage: Stage, folder: Path, shown: bool = True) -> dict:
        """`stage_config` with the inputs' checkpoints, the logger and the checkpoint folder."""
        config = self.stage_config(stage, shown)
        for key, name in stage.inputs.items():
            set_dotted(config, key, self.done[name]["checkpoint"])
        trainer = config.setdefault("trainer", {})
        trainer.update(
            default_root_dir=str(folder), enable_progress_bar=False, enable_model_summary=False
        )
        trainer["logger"] = {
            "class_path": "knockoff_lab.pipeline.loggers.ResumableCSVLogger",
            "init_args": {"save_dir": str(folder), "name": "", "version": ""},
        }
        checkpoints = [c for c in trainer.get("callbacks", []) if "Checkpoint" in c["class_path"]]
        for callback in checkpoints:  # best.ckpt, last.ckpt: the names the YAML gives them
            callback.setdefault("init_args", {}).update(
                dirpath=str(folder / "checkpoints"), enable_version_counter=False
            )
        return config

    def finished(self, stage: Stage) -> bool:
        """Whether `run` would read `stage`'s result rather than run it."""
        return not self.force and (self.folder(stage) / "result.json").exists()

    def run(self, stage: Stage, position: str, shown: bool = True) -> dict:
        """Run `stage` (or read its finished result); `shown`: the report shows its figures."""
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
        config = self.effective_config(stage, folder, shown)
        atomic_write_text(config_file, yaml.safe_dump(config))
        args = [stage.command, "--config", str(config_file)]
        last = folder / "checkpoints" / "last.ckpt"
        if stage.command == "fit" and last.exists():
            print(f"{position} {stage.name}: resuming from {last}", flush=True)
            args += ["--ckpt_path", str(last)]
        else:
            print(f"{position} {stage.name}: running {stage.command} {stage.shown}", flush=True)
        start = time.time()
        try:
            with stage_output(folder / "stdout.log", self.verbose), torch_threads(self.threads):
                cli = cli_main(args)
        except BaseException:
            print(
                f"{position} {stage.name}: FAILED after {time.time() - start:.1f} s; its "
                f"output: {folder / 'stdout.log'}",
                flush=True,
            )
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
