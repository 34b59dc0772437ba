"""Every LightningCLI YAML under configs/ parses; the embedded ones run end to end (one short
epoch). Fragments (trainer, logger, data, callbacks) are composed with a complete experiment."""

import contextlib
import io
from pathlib import Path

import pytest

from pipeline.cli import cli_main
from tests.conftest import CONFIGS

BASE = CONFIGS / "victim/digits_cnn.yaml"
EXPERIMENT_DIRS = {"victim", "surrogate", "detector", "ood"}
FRAGMENT_DIRS = {"trainer", "logger", "data", "callbacks"}
ALL = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name in EXPERIMENT_DIRS | FRAGMENT_DIRS)
SHORT = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
         "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2"]  # fmt: skip


def config_args(path: Path) -> list[str]:
    if path.parent.name in EXPERIMENT_DIRS:
        return ["--config", str(path)]
    return ["--config", str(BASE), "--config", str(path)]


def test_every_config_folder_is_covered():
    folders = {p.parent.name for p in CONFIGS.rglob("*.yaml")}
    assert folders <= EXPERIMENT_DIRS | FRAGMENT_DIRS | {"reproduce", "sweeps"}


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_parses(path: Path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *config_args(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "class_path" in out.getvalue()


@pytest.mark.parametrize("name", ["digits_cnn", "digits_5l", "digits_resnet18"])
def test_embedded_victim_config_runs(name: str):
    cli = cli_main(["fit", "--config", str(CONFIGS / f"victim/{name}.yaml"), *SHORT])
    assert "test/acc" in cli.trainer.callback_metrics


EMBEDDED_ATTACKS = sorted(
    p for p in (CONFIGS / "surrogate").glob("digits_*.yaml") if "guarded" not in p.name
)


@pytest.mark.parametrize("path", EMBEDDED_ATTACKS, ids=lambda p: p.name)
def test_embedded_attack_config_runs(path: Path, victim_ckpt: Path):
    cli = cli_main(["fit", "--config", str(path), *SHORT, "--data.init_args.api.init_args.victim",
                    str(victim_ckpt), "--data.init_args.budget", "150"])  # fmt: skip
    metrics = cli.trainer.callback_metrics
    assert {"test/acc", "test/recovery", "test/fidelity"} <= set(metrics)
