"""Command line: `python main.py {fit,validate,test,predict} --config configs/...yaml`, and
`python main.py reproduce --config configs/reproduce/<preset>.yaml` (see `pipeline`).

LightningCLI in subclass mode: any LightningModule of `lightning_modules` and any DataModule of
`datamodules` is chosen by class name or by a config file. `num_classes` flows from the data to
the model, so no config states it twice.
"""

import sys

from jsonargparse import ArgumentError
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

import datamodules  # noqa: F401  (registers the DataModules as subclass choices)
import lightning_modules  # noqa: F401  (registers the LightningModules as subclass choices)
from lightning_modules.errors import ConfigError


class KnockoffCLI(LightningCLI):
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
    """The user mistake behind `err`, if any: jsonargparse wraps errors raised in `__init__`."""
    while err is not None:
        if isinstance(err, ConfigError | ArgumentError):
            return err
        err = err.__cause__ or err.__context__
    return None


def main() -> None:
    try:
        if sys.argv[1:2] == ["reproduce"]:
            from pipeline import reproduce_main

            reproduce_main()
        else:
            cli_main()
    except Exception as err:
        if (mistake := user_error(err)) is None:
            raise  # a bug: keep the traceback
        message = " ".join(str(mistake).split()).split(" - Expected a <class 'NoneType'>")[0]
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
