import contextlib
import io

import pytest
import yaml

from knockoff_lab.pipeline.cli import cli_main, nested_nulls
from tests.conftest import CONFIGS

SURROGATE = str(CONFIGS / "surrogate/digits_natural_probs.yaml")
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")


def printed(args: list[str]) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        cli_main(["fit", "--config", SURROGATE, *args, "--print_config"])
    return yaml.safe_load(out.getvalue())


@pytest.mark.parametrize("form", ["spaced", "equals"])
def test_a_null_two_subclasses_deep_arrives_as_none(form: str):
    key, value = "--data.init_args.api.init_args.ledger", "null"
    args = [key, value] if form == "spaced" else [f"{key}={value}"]
    api = printed([*args, "--data.init_args.api.init_args.budget", "7"])["data"]["init_args"]["api"]
    assert api["init_args"]["ledger"] is None  # jsonargparse alone gives the string "None"
    assert api["init_args"]["budget"] == 7  # the other arguments are kept
    assert api["init_args"]["victim"] == "runs/victim/digits_cnn/checkpoints/best.ckpt"


def test_only_deep_nulls_are_rewritten():
    kept = ["--trainer.max_epochs", "null", "--data.init_args.budget", "null", "--x", "1"]
    assert nested_nulls(kept) == kept
    assert nested_nulls(["--a.init_args.b.init_args.c.init_args.d", "~"]) == [
        "--a.init_args.b",
        '{"init_args": {"c": {"init_args": {"d": null}}}}',
    ]
