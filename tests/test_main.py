"""The CLI as a user drives it: fit + test, reruns, parse errors, one-line user errors."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from jsonargparse import ArgumentError

from knockoff_lab.pipeline.cli import cli_main
from tests.conftest import CONFIGS, REPO
from tests.datamodules import layouts

SHORT = [
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "3",
    "--trainer.limit_val_batches",
    "1",
    "--trainer.default_root_dir",
    "run",
]


def predictions(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(images).argmax(dim=-1)


def test_fit_then_test_on_embedded_default():
    """`fit` tests the best checkpoint: the logged test accuracies are those of the checkpoint
    it saved, rebuilt from its hyper-parameters alone, on every image of the test split."""
    cli = cli_main(["fit", "--config", str(CONFIGS / "victim/digits_cnn.yaml"), *SHORT])
    metrics = cli.trainer.callback_metrics
    ckpt = cli.trainer.checkpoint_callback.best_model_path
    assert ckpt.endswith("best.ckpt")
    from lightning_modules import VictimClassifier

    model = VictimClassifier.load_from_checkpoint(ckpt, map_location="cpu")
    assert model.hparams.arch == "digits_cnn"
    images, labels = cli.datamodule.split("test").tensors
    assert len(labels) == 359  # the whole test split, not `limit_*_batches` of it
    right = predictions(model, images) == labels
    assert float(metrics["test/acc"]) == pytest.approx(right.float().mean().item(), abs=1e-6)
    for cls in range(10):
        expected = right[labels == cls].float().mean().item()
        assert float(metrics[f"test/acc_class/{cls}"]) == pytest.approx(expected, abs=1e-6)


def test_rerun_into_same_directory_and_other_subcommands():
    """A second fit into the same folder adds a version; validate, test and predict score the
    checkpoint they are given (the fit's last one), not a network of their own."""
    from lightning_modules import VictimClassifier

    args = ["--config", str(CONFIGS / "victim/digits_cnn.yaml"), *SHORT]
    cli_main(["fit", *args, "--test_after_fit", "false"])
    cli = cli_main(["fit", *args, "--test_after_fit", "false"])  # saved config must not crash
    versions = sorted(p.name for p in Path("run/lightning_logs").iterdir())
    assert versions == ["version_0", "version_1"]
    fitted = float(cli.trainer.callback_metrics["val/acc"])
    ckpt = "run/checkpoints/last.ckpt"  # configs/checkpoints/latest.yaml: every epoch
    model = VictimClassifier.load_from_checkpoint(ckpt, map_location="cpu")
    images, labels = cli.datamodule.split("test").tensors

    validated = cli_main(["validate", *args, "--ckpt_path", ckpt]).trainer.callback_metrics
    assert float(validated["val/acc"]) == pytest.approx(fitted, abs=1e-6)
    tested = cli_main(["test", *args, "--ckpt_path", ckpt]).trainer.callback_metrics
    accuracy = (predictions(model, images) == labels).float().mean().item()
    assert float(tested["test/acc"]) == pytest.approx(accuracy, abs=1e-6)
    predicted = cli_main(["predict", *args, "--ckpt_path", ckpt]).trainer.predict_loop
    posteriors = torch.cat(predicted.predictions)  # of the digits' attacker pool split
    with torch.no_grad():
        expected = model(cli.datamodule.split("pool").labelled.tensors[0]).softmax(dim=-1)
    assert posteriors.shape == (359, 10) and torch.allclose(posteriors, expected, atol=1e-5)


FAST = SHORT[:-2]  # without the run folder


def test_checkpoints_follow_the_run_folder(tmp_path: Path, capsys):
    """No config fixes a checkpoint dirpath: best.ckpt and last.ckpt go to
    <default_root_dir>/checkpoints (not inside version_N), wherever the run folder is moved."""
    elsewhere = tmp_path / "elsewhere"
    cli = cli_main(
        [
            "fit",
            "--config",
            str(CONFIGS / "victim/digits_cnn.yaml"),
            *FAST,
            "--trainer.default_root_dir",
            str(elsewhere),
            "--test_after_fit",
            "false",
        ]
    )
    checkpoints = elsewhere / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert cli.trainer.checkpoint_callback.best_model_path == str(checkpoints / "best.ckpt")
    assert not Path("runs").exists()
    assert f"checkpoints go to {checkpoints}\n" in capsys.readouterr().out


def test_a_rerun_overwrites_the_stable_checkpoints(tmp_path: Path):
    """A second run into the same folder replaces best.ckpt (no best-v1.ckpt beside a stale
    best.ckpt): the checkpoint fragments turn Lightning's version counter off."""
    args = [
        "fit",
        "--config",
        str(CONFIGS / "victim/digits_cnn.yaml"),
        *FAST,
        "--trainer.default_root_dir",
        str(tmp_path),
        "--test_after_fit",
        "false",
    ]
    cli_main(args)
    first = (tmp_path / "checkpoints/best.ckpt").stat().st_mtime_ns
    cli_main(args)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "best.ckpt",
        "last.ckpt",
    ]
    assert (tmp_path / "checkpoints/best.ckpt").stat().st_mtime_ns > first


def test_the_config_run_folder_keeps_the_stable_path_of_the_attack_configs():
    """default_root_dir runs/victim/digits_cnn: the checkpoint the attack configs name."""
    cli_main(
        [
            "fit",
            "--config",
            str(CONFIGS / "victim/digits_cnn.yaml"),
            *FAST,
            "--test_after_fit",
            "false",
        ]
    )
    assert Path("runs/victim/digits_cnn/checkpoints/best.ckpt").is_file()
    assert Path("runs/victim/digits_cnn/checkpoints/last.ckpt").is_file()


def test_an_explicit_checkpoint_dirpath_is_kept(tmp_path: Path, capsys):
    mine = tmp_path / "mine"
    cli_main(
        [
            "fit",
            "--config",
            str(CONFIGS / "victim/digits_cnn.yaml"),
            *SHORT,
            "--trainer.callbacks.dirpath",
            str(mine),
            "--test_after_fit",
            "false",
        ]
    )
    # `--trainer.callbacks.dirpath` sets the last callback's: latest.yaml's last.ckpt
    assert sorted(p.name for p in mine.iterdir()) == ["last.ckpt"]
    assert sorted(p.name for p in Path("run/checkpoints").iterdir()) == ["best.ckpt"]
    assert (
        f"checkpoints go to {Path('run/checkpoints').resolve()}, {mine}\n"
        in capsys.readouterr().out
    )


def test_model_chosen_by_class_name():
    """`num_classes` is linked from the data: GTSRB's 43, not the model's default of 10."""
    layouts.gtsrb(Path("data"))
    cli = cli_main(
        [
            "fit",
            "--model",
            "VictimClassifier",
            "--data",
            "GTSRBDataModule",
            "--data.root",
            "data",
            "--data.image_size",
            "32",
            "--trainer.fast_dev_run",
            "true",
            "--test_after_fit",
            "false",
        ]
    )
    assert cli.model.hparams.num_classes == 43
    assert cli.model(torch.zeros(2, 3, 32, 32)).shape == (2, 43)


def test_unknown_key_rejected_before_training():
    """Rejected at parse time: the config's run folder (runs/victim/digits_cnn, under the
    working directory) is never made."""
    with pytest.raises(ArgumentError, match="foo"):
        cli_main(
            [
                "fit",
                "--config",
                str(CONFIGS / "victim/digits_cnn.yaml"),
                "--model.init_args.foo",
                "1",
            ]
        )
    assert not Path("runs").exists()


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
        [
            sys.executable,
            str(REPO / "main.py"),
            "fit",
            "--config",
            str(CONFIGS / "victim/digits_cnn.yaml"),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr
    assert proc.stderr.splitlines() == errors  # Lightning's info lines went to stdout


def test_bf16_mixed_precision_with_channels_last_resnet():
    """The GPU recipe (configs/trainer/gpu.yaml + channels_last), on CPU: convolutions run in
    bf16 while training, the master weights stay fp32 and NHWC, and stay bounded.

    At 32 px, not the config's 16: torch 2.14.1's CPU bf16 convolution returns a wrong weight
    gradient (uninitialised memory, up to 1e28, in 12 of 20 tries) when a stride-2 3x3 conv
    sees a 1x1 input, which is layer4.0.conv1 of a resnet18 at 16 px; fp32, and 2x2 inputs, are
    right. A CPU-only fault of that kernel, not of the recipe (GPUs use cuDNN)."""
    conv_dtypes = set()

    def record(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d) and module.training:
            conv_dtypes.add(output.dtype)

    fast = [
        "--trainer.precision",
        "bf16-mixed",
        "--model.init_args.channels_last",
        "true",
        "--data.init_args.image_size",
        "32",
    ]
    hook = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        cli = cli_main(
            ["fit", "--config", str(CONFIGS / "victim/digits_resnet18.yaml"), *SHORT, *fast]
        )
    finally:
        hook.remove()
    assert conv_dtypes == {torch.bfloat16}
    weight = cli.model.net.conv1.weight
    assert weight.dtype == torch.float32
    assert weight.is_contiguous(memory_format=torch.channels_last)
    # three SGD steps move no weight far from its init (max 1.06); a garbage gradient does
    assert max(p.abs().max() for p in cli.model.parameters()) < 10
