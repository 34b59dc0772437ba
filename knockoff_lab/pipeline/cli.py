"""LightningCLI for `fit`, `validate`, `test` and `predict` (`main.py` dispatches here through
`pipeline.entry`; `reproduce` runs every stage of a preset through `cli_main`).

LightningCLI in subclass mode: any LightningModule of `lightning_modules` and any DataModule of
`datamodules` is chosen by class name or by a config file. `num_classes` flows from the data to
the model, so no config states it twice. A run's folder, when no config names one, is named by
its configs (`run_folder`); checkpoints follow it: a ModelCheckpoint without a `dirpath` writes
to `<trainer.default_root_dir>/checkpoints` (stable, not inside the logger's `version_N`), so
`--trainer.default_root_dir elsewhere` moves them too.
"""

import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from torch import nn

import datamodules  # noqa: F401  (registers the DataModules as subclass choices)
import lightning_modules  # noqa: F401  (registers the LightningModules as subclass choices)
from datamodules.on_disk import check_present
from knockoff_lab.core.checkpoints import disagreement, net_state, read_checkpoint
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.pipeline.trust import check_arguments, check_trusted

CKPT_KEYWORDS = ("best", "last", "hpc")  # Lightning resolves these itself


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


# overlays that say how or where a run goes, not what it learns: they do not rename its folder
UNNAMED_OVERLAYS = ("trainer", "logger")


def run_folder(configs: list[str]) -> str:
    """A run's folder when no config names one: `runs/` and the first config's path under
    `configs/` (`configs/victim/digits_cnn.yaml` runs in `runs/victim/digits_cnn`, where the
    attack configs read its checkpoint), then `+<name>` for each overlay that changes what is
    learnt (`runs/surrogate/digits_natural_probs+label_only`): composing YAMLs never writes
    over another composition's checkpoints."""
    first = Path(configs[0])
    parts = first.with_suffix("").parts
    where = parts[len(parts) - parts[::-1].index("configs") :] if "configs" in parts else parts[-1:]
    folder = "runs/" + "/".join(where)
    overlays = [Path(c) for c in configs[1:]]
    return folder + "".join(f"+{p.stem}" for p in overlays if p.parent.name not in UNNAMED_OVERLAYS)


NULLS = ("null", "Null", "NULL", "~")


def nested_nulls(args: list[str]) -> list[str]:
    """`args` with each null two subclasses deep given as a JSON override of the outer one.

    jsonargparse (4.53) reads `--data.init_args.api.init_args.ledger null` as the string
    "None" (it loads the value, then formats it back into an option for the inner parser);
    `--data.init_args.api '{"init_args": {"ledger": null}}'` reaches the inner class as None.
    """
    rewritten, at = [], 0
    while at < len(args):
        key, equals, value = args[at].partition("=")
        if not equals:  # `--key value`
            value = args[at + 1] if at + 1 < len(args) else ""
        outer, _, inner = key.partition(".init_args.")
        middle, _, rest = inner.partition(".init_args.")
        deep = key.startswith("--") and rest and not any(p.isdigit() for p in key.split("."))
        if deep and value in NULLS:
            override: Any = None
            for part in reversed(rest.split(".")):
                override = {part: override}
            rewritten += [f"{outer}.init_args.{middle}", json.dumps({"init_args": override})]
            at += 1 if equals else 2
        else:
            rewritten.append(args[at])
            at += 1
    return rewritten


def checkpoints_follow_run_folder(trainer: Trainer) -> list[str]:
    """Give every ModelCheckpoint of `trainer` without a `dirpath` the run folder's stable
    `<default_root_dir>/checkpoints` (Lightning's default would be the logger's `version_N`);
    one with an explicit dirpath keeps it. Returns where each writes. The config fragments under
    `configs/checkpoints/` turn Lightning's version counter off, so a rerun overwrites best.ckpt
    rather than leaving it stale beside best-v1.ckpt."""
    run_folder = trainer.default_root_dir
    if "://" not in run_folder:  # a local folder, resolved as ModelCheckpoint resolves it
        run_folder = os.path.realpath(os.path.expanduser(run_folder))
    where = []
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            if callback.dirpath is None:
                callback.dirpath = os.path.join(run_folder, "checkpoints")
            where.append(str(callback.dirpath))
    return where


def last_checkpoints(trainer: Trainer) -> list[Path]:
    """The files `ckpt_path="last"` chooses from, as Lightning finds them when the fit starts:
    those named `*last*` in each local ModelCheckpoint's folder, the newest first."""
    found = [
        path
        for callback in trainer.checkpoint_callbacks
        if isinstance(callback, ModelCheckpoint) and "://" not in str(callback.dirpath)
        for path in Path(str(callback.dirpath)).glob(f"*{callback.CHECKPOINT_NAME_LAST}*")
        if path.is_file()
    ]
    return sorted(found, key=lambda path: path.stat().st_mtime, reverse=True)


class KnockoffCLI(LightningCLI):
    _checkpoint: tuple[str, dict[str, Any]] | None = None

    def __init__(self, *args: Any, **kwargs: Any):
        """As LightningCLI; the subcommand named first in the arguments is the only one whose
        parser is built (a third of a small stage's fixed cost was building the other three)."""
        given = sys.argv[1:] if kwargs.get("args") is None else kwargs["args"]
        self.asked = given[0] if given and isinstance(given, list) else None
        super().__init__(*args, **kwargs)

    def subcommands(self) -> dict[str, set[str]]:
        every = LightningCLI.subcommands()
        return {self.asked: every[self.asked]} if self.asked in every else every

    def _parse_ckpt_path(self) -> None:
        """Check `--ckpt_path` before Lightning reads its hyperparameters into the config."""
        if subcommand := self.config.get("subcommand"):
            path = self.config[subcommand].get("ckpt_path")
            if (checkpoint := read_ckpt_path(path)) is not None:
                self._checkpoint = (str(path), checkpoint)
                # its hyperparameters are a config too: checked before the parser reads them
                hparams = checkpoint.get("hyper_parameters") or {}
                check_trusted(
                    {k: v for k, v in hparams.items() if k != "_instantiator"}, f"{path}: "
                )  # Lightning drops `_instantiator` (its own function) before parsing
        super()._parse_ckpt_path()

    def parse_arguments(self, parser, args) -> None:
        """The command line checked by the trust policy before anything it names is imported,
        then parsed with its deep nulls mended (`nested_nulls`)."""
        if args is None or isinstance(args, list):
            given = sys.argv[1:] if args is None else args
            check_arguments(given)
            self.config = parser.parse_args(nested_nulls(given))
        else:
            super().parse_arguments(parser, args)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_trusted(config.as_dict())
        if config.trainer.default_root_dir is None and config.get("config"):
            config.trainer.default_root_dir = run_folder([str(p) for p in config.config if p])

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
        if self.subcommand == "fit" and self.config.fit.get("ckpt_path") == "last":
            for path in last_checkpoints(self.trainer)[:1]:  # before the run folder is written
                read_checkpoint(path, "checkpoint", mmap=True)
        if self.datamodule is not None:
            check_present(self.datamodule)
            for callback in self.trainer.callbacks:  # e.g. DefenceReport's: before the queries
                if callable(check_data := getattr(callback, "check_data", None)):
                    check_data(self.datamodule)

    def _dump_config(self) -> None:
        """LightningCLI's dump of the config, whose sections become the hyperparameters saved
        with the model and the data, without validating the config again: parsing validated it,
        and the second check cost 0.17 s of a small stage's few seconds."""
        if not hasattr(self, "config_dump"):
            dump = self.parser.dump(
                self.config,
                format="yaml",
                skip_link_targets=False,
                skip_none=False,
                skip_validation=True,
            )
            self.config_dump = yaml.safe_load(dump)
            if "subcommand" in self.config:
                self.config_dump = self.config_dump[self.config.subcommand]

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments(
            "data.num_classes", "model.init_args.num_classes", apply_on="instantiate"
        )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="After `fit`, test the best checkpoint on the test split (default: true).",
        )

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
        # what no experiment YAML repeats: seed 0, and one device unless a config asks for more
        # (configs/trainer/ddp.yaml); Lightning's "auto" would take every GPU of a node
        seed_everything_default=0,
        trainer_defaults={"devices": 1},
        parser_kwargs={"exit_on_error": False},
        args=args,
    )
