"""Every configs/data/*.yaml fragment and real-data victim config parses, instantiates against
its dataset in the real layout, and trains end to end with tiny settings, as a new user would
run it."""

import contextlib
import importlib
import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from datamodules.overlap import DATASETS as VICTIM_DATASETS
from knockoff_lab.core.fragments import read_config
from knockoff_lab.pipeline.cli import cli_main
from knockoff_lab.pipeline.entry import main
from tests.conftest import CONFIGS, REPO
from tests.datamodules.layouts import WRITERS

Layout = Callable[[str], Path]
BASE = CONFIGS / "victim/digits_cnn.yaml"


# the configs of the datasets on disk (the embedded ones are tested in tests/test_configs.py)
DATA = sorted(p for p in (CONFIGS / "data").glob("*.yaml") if p.stem in WRITERS)
# every paper recipe with every victim dataset (those with an overlap list: datamodules.overlap)
VICTIMS = [("rn34", dataset) for dataset in VICTIM_DATASETS] + [("from_scratch", "gtsrb")]
# settings that fit the tiny fixtures (tests/datamodules/layouts.py); everything else as shipped
TINY = {
    "caltech256": {"test_per_class": 1},
    "diabetic5": {"test_per_class": 2},
    "imagenet_subset": {"per_class": 10},
    "openimages": {"size": 20},
    "bing": {"per_class": 4},
}
# "1" would parse as 1.0, i.e. all batches: two batches each, no sanity check
SHORT = [
    "--model.init_args.weights",
    "null",
    "--data.image_size",
    "32",
    "--data.batch_size",
    "4",
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "2",
    "--trainer.limit_val_batches",
    "2",
    "--trainer.limit_test_batches",
    "2",
    "--trainer.num_sanity_val_steps",
    "0",
]
pytestmark = pytest.mark.filterwarnings(
    "ignore:dropped 1 Diabetic5",
    "ignore:.* fewer than",
    "ignore:LightningCLI's args parameter",  # pytest's own argv
    "ignore:The number of training batches",
)


def tiny_args(dataset: str) -> list[str]:
    return [arg for k, v in TINY.get(dataset, {}).items() for arg in (f"--data.{k}", str(v))]


def print_config(args: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return out.getvalue()


# the victim recipes of real datasets (the embedded ones have no data root)
RECIPES = sorted(p for p in (CONFIGS / "victim").glob("*.yaml") if "'root'" in str(read_config(p)))


@pytest.mark.parametrize("path", DATA + RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_parses_with_a_data_root(path: Path):
    args = (
        ["--config", str(path)] if path in RECIPES else ["--config", str(BASE), "--data", str(path)]
    )
    printed = yaml.safe_load(print_config([*args, "--data.root", "/some/where"]))
    assert printed["data"]["init_args"]["root"] == "/some/where"


@pytest.mark.parametrize("path", DATA, ids=lambda p: p.name)
def test_data_config_instantiates_against_its_dataset(path: Path, layout: Layout):
    spec = yaml.safe_load(path.read_text())  # a fragment: the class and its arguments
    module, name = spec["class_path"].rsplit(".", 1)
    args = {**spec["init_args"], "root": str(layout(path.stem)), "num_workers": 0}
    dm = getattr(importlib.import_module(module), name)(**{**args, **TINY.get(path.stem, {})})
    dm.setup()
    for split in dm.splits.values():
        item = split[0]
        image = item[0] if isinstance(item, tuple) else item
        assert image.shape == (3, dm.image_size, dm.image_size)  # the YAML's, or the default


@pytest.mark.parametrize("recipe, dataset", VICTIMS, ids=lambda x: x)
def test_victim_config_trains_and_tests(recipe: str, dataset: str, layout: Layout):
    """The recipe, data and checkpointing of every victim; ResNet34 (seconds per step on two
    CPU cores) is swapped for the small CNN here and runs in the command-line test below."""
    root = str(layout(dataset))
    small = ["--model.init_args.arch", "digits_cnn"] if recipe == "rn34" else []
    cli = cli_main(
        [
            "fit",
            "--config",
            str(CONFIGS / f"victim/{recipe}.yaml"),
            "--data",
            str(CONFIGS / f"data/{dataset}.yaml"),
            "--data.root",
            root,
            *SHORT,
            *small,
            *tiny_args(dataset),
            "--data.num_workers",
            "0",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    assert "test/acc" in cli.trainer.callback_metrics
    assert cli.model.hparams.num_classes == cli.datamodule.num_classes
    assert cli.trainer.checkpoint_callback.best_model_path.endswith("best.ckpt")


def test_new_user_command_line_with_worker_processes(layout: Layout, tmp_path: Path):
    """`python main.py fit --config configs/victim/rn34.yaml --data configs/data/cifar10.yaml
    --data.root DIR`: ResNet34, two DataLoader worker processes, checkpoint, test."""
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "main.py"),
            "fit",
            "--config",
            str(CONFIGS / "victim/rn34.yaml"),
            "--data",
            str(CONFIGS / "data/cifar10.yaml"),
            "--data.root",
            str(layout("cifar10")),
            *SHORT,
            "--data.batch_size",
            "2",
            "--data.num_workers",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test/acc" in proc.stdout and (tmp_path / "runs/victim/rn34").is_dir()


def test_missing_data_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path: Path):
    argv = [
        "main.py",
        "fit",
        "--config",
        str(CONFIGS / "victim/from_scratch.yaml"),
        "--data.root",
        str(tmp_path),
    ]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == 2 and len(errors) == 1
    assert errors[0].startswith(
        f"error: GTSRBDataModule: the dataset's folder not found under data.root={tmp_path}; "
        f"looked at {tmp_path / 'gtsrb'}; expected <root>/gtsrb/ holding GTSRB/Training/"
    )
    assert "download: true" in errors[0]


def on_disk_specs(node, key: str = "data"):
    """(dotted key, class, init_args) of every on-disk DataModule in a parsed config, nested
    anywhere (in_data, out_data, pool, victim_data, ...)."""
    if isinstance(node, dict):
        path = node.get("class_path", "")
        if path.startswith("datamodules.") and "root" in node.get("init_args", {}):
            module, name = path.rsplit(".", 1)
            yield key, getattr(importlib.import_module(module), name), node["init_args"]
        for name, value in node.items():
            yield from on_disk_specs(value, f"{key}.{name}")


def data_of(path: Path):
    """The `data` of an experiment config, or a data fragment itself, fragments inlined."""
    config = read_config(path)
    return config if path.parent.name == "data" else config.get("data")


EXPERIMENTS = sorted(
    p
    for folder in ("victim", "surrogate", "detector", "ood", "data")
    for p in (CONFIGS / folder).glob("*.yaml")
    if list(on_disk_specs(data_of(p)))
)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_one_data_root_serves_every_dataset_of_a_config(path: Path, data_root: Path):
    """Every config says `root: data`; pointed at one root holding all datasets, each of its
    on-disk DataModules (nested ones included) finds its own dataset there."""
    specs = list(on_disk_specs(data_of(path)))
    assert {args["root"] for _, _, args in specs} == {"data"}
    for key, cls, args in specs:
        dm = cls(**{**args, "root": str(data_root), "num_workers": 0})
        assert dm.dataset_dir().is_relative_to(data_root), key
