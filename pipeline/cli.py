"""The command line behind `main.py`: LightningCLI for `fit`, `validate`, `test` and
`predict`, `reproduce` for a whole preset, and the one-line report of a user's mistake.

LightningCLI in subclass mode: any LightningModule of `lightning_modules` and any DataModule of
`datamodules` is chosen by class name or by a config file. `num_classes` flows from the data to
the model, so no config states it twice. Checkpoints follow the run folder: a ModelCheckpoint
without a `dirpath` writes to `<trainer.default_root_dir>/checkpoints` (stable, not inside the
logger's `version_N`), so `--trainer.default_root_dir elsewhere` moves them too.
"""

import logging
import os
import re
import sys
from collections.abc import Iterator
from typing import Any

from jsonargparse import ArgumentError
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from torch import nn

import datamodules  # noqa: F401  (registers the DataModules as subclass choices)
import lightning_modules  # noqa: F401  (registers the LightningModules as subclass choices)
from core.checkpoints import disagreement, net_state, read_checkpoint
from core.errors import ConfigError
from datamodules.on_disk import check_present
from lightning_modules.loggers import LIGHTNING_LOGGERS

CKPT_KEYWORDS = ("best", "last", "hpc")  # Lightning resolves these itself

# A config is code: a `class_path` may name any callable (`os.system` included) and it runs.
# Only these packages are instantiated unless the user widens the list for this run, outside
# any config file (a config cannot vouch for itself): KNOCKOFF_TRUSTED_MODULES=pkg1,pkg2.
TRUSTED_MODULES = (
    *("torch", "torchvision", "torchmetrics", "lightning", "sklearn"),
    *("api", "attacks", "core", "datamodules", "defences", "lightning_modules", "pipeline"),
)


def trusted_modules() -> tuple[str, ...]:
    extra = os.environ.get("KNOCKOFF_TRUSTED_MODULES", "")
    return TRUSTED_MODULES + tuple(m.strip() for m in extra.split(",") if m.strip())


def class_paths(node: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, class path) of every `class_path` in a parsed config."""
    if isinstance(node, dict):
        for name, value in node.items():
            if name == "class_path" and isinstance(value, str):
                yield key, value
            else:
                yield from class_paths(value, f"{key}.{name}" if key else name)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from class_paths(value, f"{key}.{i}")


def check_trusted(config: dict) -> None:
    """A one-line ConfigError for a class path outside the trusted packages, before anything
    named in the config is instantiated."""
    trusted = trusted_modules()
    for key, path in class_paths(config):
        if path.split(".")[0] not in trusted:
            raise ConfigError(
                f"{key}.class_path: {path!r} is outside the trusted packages "
                f"({', '.join(trusted)}); if you trust it, run with "
                f"KNOCKOFF_TRUSTED_MODULES={path.split('.')[0]}"
            )


def read_ckpt_path(path: str | None) -> dict[str, Any] | None:
    """The `--ckpt_path` checkpoint, memory-mapped and unpickling no code, or a one-line error
    naming the file (Lightning's own are tracebacks). None for keywords and remote paths."""
    if not path or path in CKPT_KEYWORDS or ":" in str(path).split("/")[0]:
        return None
    return read_checkpoint(path, "ckpt_path", mmap=True)


def check_fits(path: str, checkpoint: dict[str, Any], model: LightningModule) -> None:
    """A one-line error naming `path` if its network (`net.*`) does not fit `model.net`."""
    if not isinstance(net := getattr(model, "net", None), nn.Module):
        return
    if problem := disagreement(net, net_state(checkpoint)):
        keys = ("arch", "num_classes")
        saved = checkpoint.get("hyper_parameters") or {}
        want = ", ".join(f"{k}={model.hparams[k]}" for k in keys if k in model.hparams)
        was = ", ".join(f"{k}={saved[k]}" for k in keys if k in saved) or "no arch recorded"
        raise ConfigError(
            f"ckpt_path {path} does not fit the model ({want}): saved with {was} ({problem})"
        )


def checkpoints_follow_run_folder(trainer: Trainer) -> list[str]:
    """Give every ModelCheckpoint of `trainer` without a `dirpath` the run folder's stable
    `<default_root_dir>/checkpoints` (Lightning's default would be the logger's `version_N`);
    one with an explicit dirpath keeps it (and its version counter). Returns where each writes."""
    run_folder = trainer.default_root_dir
    if _is_local_file_protocol(run_folder):
        run_folder = os.path.realpath(os.path.expanduser(run_folder))  # as ModelCheckpoint does
    where = []
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            if callback.dirpath is None:
                callback.dirpath = os.path.join(run_folder, "checkpoints")
                # a stable path must name the newest run: a rerun overwrites best.ckpt rather
                # than writing best-v1.ckpt beside a stale best.ckpt that configs would read
                callback._enable_version_counter = False
            where.append(str(callback.dirpath))
    return where


class KnockoffCLI(LightningCLI):
    _checkpoint: tuple[str, dict[str, Any]] | None = None

    def _parse_ckpt_path(self) -> None:
        """Check `--ckpt_path` before Lightning reads its hyperparameters into the config."""
        if subcommand := self.config.get("subcommand"):
            path = self.config[subcommand].get("ckpt_path")
            if (checkpoint := read_ckpt_path(path)) is not None:
                self._checkpoint = (str(path), checkpoint)
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_trusted(config.as_dict())

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, its checkpoints in the run folder (one line says where they go)."""
        trainer = super().instantiate_trainer(**kwargs)
        where = checkpoints_follow_run_folder(trainer)
        if self.subcommand == "fit" and where and trainer.is_global_zero:
            print(f"checkpoints go to {', '.join(dict.fromkeys(where))}", flush=True)
        return trainer

    def after_instantiate_classes(self) -> None:
        """A checkpoint of another network or absent data fails here, before any run folder is
        written and before any dataset starts its expensive work."""
        if self._checkpoint is not None:
            check_fits(*self._checkpoint, self.model)
            self._checkpoint = None
        if self.datamodule is not None:
            check_present(self.datamodule)
            for callback in self.trainer.callbacks:  # e.g. DefenceReport's: before the queries
                if callable(check_data := getattr(callback, "check_data", None)):
                    check_data(self.datamodule)

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments(
            "data.num_classes", "model.init_args.num_classes", apply_on="instantiate"
        )
        parser.add_argument(
            "--test_after_fit", type=bool, default=True,
            help="After `fit`, test the best checkpoint on the test split (default: true).",
        )  # fmt: skip

    def after_fit(self) -> None:
        if self.config_init[self.subcommand].get("test_after_fit", False):
            saved = getattr(self.trainer.checkpoint_callback, "best_model_path", "")
            ckpt = "best" if saved else None  # fast_dev_run saves nothing: test as trained
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)


def cli_main(args: list[str] | None = None) -> KnockoffCLI:
    """Run the CLI on `args` (default: sys.argv). User mistakes raise `ConfigError`."""
    return KnockoffCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,  # the optimizer is a model argument, in one place
        save_config_kwargs={"overwrite": True},  # reruns into one directory must not crash
        parser_kwargs={"exit_on_error": False},
        args=args,
    )


def user_error(err: BaseException) -> BaseException | None:
    """The user mistake behind `err`, if any: a `ConfigError` (jsonargparse wraps those raised
    in `__init__` in its own errors), else a parse error."""
    chain = []
    while err is not None and err not in chain:
        chain.append(err)
        err = err.__cause__ or err.__context__
    if configs := [e for e in chain if isinstance(e, ConfigError)]:
        return configs[0]
    return next((e for e in chain if isinstance(e, ArgumentError)), None)


NOISE = ("Does not validate against", "Subtypes:", "Errors:", "Given value type:",
         "Expected a <class 'NoneType'>")  # fmt: skip


def one_line(message: str) -> str:
    """jsonargparse's nested report as one line: the dotted key at fault, then what was expected
    and the value given; any other message with its whitespace collapsed."""
    keys, errors, given = [], [], ""
    for line in message.splitlines():
        line = line.strip().removeprefix("- ")
        if key := re.match(r'Parser key "([^"]+)":\s*(.*)', line):
            keys.append(key[1])
            errors += [key[2]] if key[2] else []
        elif line.startswith("Problem with given class_path"):
            keys.append("init_args")
        elif line.startswith("Given value:"):
            given = line.removeprefix("Given value:").strip()
        elif line and not line.startswith(NOISE):
            errors.append(line)
    text = " ".join(" ".join(errors).split())
    if not keys or not text:
        return " ".join(message.split())
    if given and "Got value" not in text and not re.match(r"\w+\(", given):
        text += f". Got value: {given}"
    return f"{'.'.join(keys)}: {text}"


def info_to_stdout() -> None:
    """Lightning's progress messages ("Seed set", "GPU available") go to stdout, so stderr holds
    warnings and, after a user mistake, the one error line."""
    for name in LIGHTNING_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr:
                handler.setStream(sys.stdout)


def main() -> None:
    info_to_stdout()
    try:
        if sys.argv[1:2] == ["reproduce"]:
            from pipeline.reproduce import reproduce_main

            reproduce_main()
        elif sys.argv[1:2] == ["serve"]:
            from pipeline.serve import serve_main

            serve_main(sys.argv[2:])
        else:
            cli_main()
    except Exception as err:
        if (mistake := user_error(err)) is None:
            raise  # a bug: keep the traceback
        print(f"error: {one_line(str(mistake))}", file=sys.stderr)
        sys.exit(2)
