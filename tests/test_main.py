"""The CLI as a user drives it: fit + test, reruns, parse errors, one-line user errors."""

import subprocess
import sys

import pytest
import torch
from jsonargparse import ArgumentError

from pipeline.cli import cli_main
from tests.conftest import CONFIGS, REPO

SHORT = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
         "--trainer.limit_val_batches", "1", "--trainer.default_root_dir", "run"]  # fmt: skip


def test_fit_then_test_on_embedded_default():
    cli = cli_main(["fit", "--config", str(CONFIGS / "victim/digits_cnn.yaml"), *SHORT])
    metrics = cli.trainer.callback_metrics
    assert 0.0 <= float(metrics["test/acc"]) <= 1.0
    assert "test/acc_class/9" in metrics
    # the checkpoint keeps what rebuilds the network
    ckpt = cli.trainer.checkpoint_callback.best_model_path
    assert ckpt.endswith("best.ckpt")
    from lightning_modules import VictimClassifier

    model = VictimClassifier.load_from_checkpoint(ckpt, map_location="cpu")
    assert model.hparams.arch == "digits_cnn" and model.hparams.num_classes == 10


def test_rerun_into_same_directory_and_other_subcommands():
    args = ["--config", str(CONFIGS / "victim/digits_cnn.yaml"), *SHORT]
    cli_main(["fit", *args, "--test_after_fit", "false"])
    cli = cli_main(["fit", *args, "--test_after_fit", "false"])  # saved config must not crash
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    for sub in ("validate", "test", "predict"):
        cli_main([sub, *args, "--ckpt_path", ckpt])


def test_model_chosen_by_class_name():
    cli = cli_main(["fit", "--model", "VictimClassifier", "--data", "DigitsDataModule",
                    "--trainer.fast_dev_run", "true", "--test_after_fit", "false"])  # fmt: skip
    assert cli.model.hparams.num_classes == 10  # linked from the data


def test_unknown_key_rejected_before_training():
    with pytest.raises(ArgumentError, match="foo"):
        cli_main(["fit", "--config", str(CONFIGS / "victim/digits_cnn.yaml"),
                  "--model.init_args.foo", "1"])  # fmt: skip
    assert not (REPO / "runs").joinpath("never").exists()


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--model.init_args.arch", "resnet7"], "unknown arch 'resnet7'; known: cifar10_9l"),
        (["--model.init_args.weights", "missing.pt"], "weights file missing.pt does not exist"),
        (["--model.init_args.foo", "1"], "'foo' is not accepted"),
        (["--trainer.max_epochs", "many"], "trainer.max_epochs"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(extra, expected):
    proc = subprocess.run(
        [sys.executable, str(REPO / "main.py"), "fit", "--config",
         str(CONFIGS / "victim/digits_cnn.yaml"), *extra],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr
    assert proc.stderr.splitlines() == errors  # Lightning's info lines went to stdout


def test_bf16_mixed_precision_with_channels_last_resnet():
    """The GPU recipe (configs/trainer/gpu.yaml + channels_last), on CPU: convolutions run in
    bf16 while training, the master weights stay fp32 and NHWC, and stay finite."""
    conv_dtypes = set()

    def record(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d) and module.training:
            conv_dtypes.add(output.dtype)

    fast = ["--trainer.precision", "bf16-mixed", "--model.init_args.channels_last", "true"]
    hook = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        cli = cli_main(["fit", "--config", str(CONFIGS / "victim/digits_resnet18.yaml"), *SHORT,
                        *fast])  # fmt: skip
    finally:
        hook.remove()
    assert conv_dtypes == {torch.bfloat16}
    weight = cli.model.net.conv1.weight
    assert weight.dtype == torch.float32
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())
