"""Each W&B sweep's command line, with one parameter set substituted as the agent does it
(`${args}` -> `--key=value`), parses and runs one short epoch offline."""

from pathlib import Path

import pytest
import yaml

from knockoff_lab.pipeline.cli import cli_main
from tests.conftest import CONFIGS, REPO

SWEEPS = sorted((CONFIGS / "sweeps").glob("*.yaml"))


def agent_command(sweep: dict) -> list[str]:
    """The command the W&B agent runs for the first value of every parameter."""
    args = [f"--{key}={spec['values'][0]}" for key, spec in sweep["parameters"].items()]
    command = []
    for part in sweep["command"]:
        if part == "${env}":
            continue
        command += args if part == "${args}" else [part.replace("${program}", sweep["program"])]
    return command


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_command_parses_and_runs(path: Path, victim_ckpt: Path):
    sweep = yaml.safe_load(path.read_text())
    assert sweep["metric"]["name"].startswith("val/")  # never the victim's test set
    command = agent_command(sweep)
    assert command[:3] == ["python", "main.py", "fit"]
    args = [str(REPO / a) if a.startswith("configs/") else a for a in command[3:]]
    cli = cli_main(
        [
            "fit",
            *args,
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=2",
            "--data.init_args.budget=150",
            f"--data.init_args.api.init_args.victim={victim_ckpt}",
        ]
    )
    assert "test/acc" in cli.trainer.callback_metrics
    assert list(Path("runs/wandb").glob("offline-run-*"))
