"""Every YAML under configs/ parses; the embedded ones run end to end (one short epoch)."""

import contextlib
import io
from pathlib import Path

import pytest

from main import cli_main
from tests.conftest import CONFIGS

# Fragments (trainer, logger, data) are composed with a full experiment config.
BASE = CONFIGS / "victim/digits_cnn.yaml"
ALL = sorted(CONFIGS.rglob("*.yaml"))
EXPERIMENTS = [p for p in ALL if p.parent.name in {"victim"}]
EMBEDDED = [p for p in EXPERIMENTS if p.name.startswith("digits_")]


def config_args(path: Path) -> list[str]:
    if path in EXPERIMENTS:
        return ["--config", str(path)]
    return ["--config", str(BASE), "--config", str(path)]


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_parses(path: Path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *config_args(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "class_path" in out.getvalue()


@pytest.mark.parametrize("path", EMBEDDED, ids=lambda p: p.name)
def test_embedded_config_runs(path: Path):
    cli = cli_main(["fit", *config_args(path), "--trainer.max_epochs", "1",
                    "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
                    "--trainer.limit_test_batches", "1"])  # fmt: skip
    assert "test/acc" in cli.trainer.callback_metrics
