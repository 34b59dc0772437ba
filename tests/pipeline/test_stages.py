"""Stage settings checked when a preset is read (a typo fails at once, not hours into a run),
and stage records that hold wherever their folder is reached from."""

import json
import re
from pathlib import Path

import pytest

from knockoff_lab.core.errors import ConfigError
from knockoff_lab.core.fragments import read_config
from knockoff_lab.pipeline.keys import check_keys, missing_setting
from knockoff_lab.pipeline.stages import Stage, read_result
from tests.conftest import CONFIGS

VICTIM = str(CONFIGS / "victim/digits_cnn.yaml")
SURROGATE = str(CONFIGS / "surrogate/digits_natural_probs.yaml")


def config(path: str) -> dict:
    return read_config(path)


@pytest.mark.parametrize(
    "path, key",
    [
        (VICTIM, "trainer.max_epochs"),  # in the YAML
        (VICTIM, "trainer.callbacks.0.init_args.monitor"),  # through a list
        (VICTIM, "trainer.limit_train_batches"),  # a Trainer argument the YAML does not set
        (VICTIM, "seed_everything"),
        (VICTIM, "model.init_args.channels_last"),  # a parameter of the model's class
        (VICTIM, "model.init_args.lr_scheduler.init_args.eta_min"),  # of a nested class
        (VICTIM, "trainer.callbacks.0.init_args.save_top_k"),  # of a callback
        (SURROGATE, "data.init_args.pool.init_args.size"),
        (SURROGATE, "data.init_args.api.init_args.victim"),
    ],
)
def test_a_key_of_the_yaml_or_of_the_class_it_sits_under_is_accepted(path, key):
    assert missing_setting(config(path), key) is None


@pytest.mark.parametrize(
    "path, key, problem",
    [
        (
            VICTIM,
            "trainer.max_epoch",
            "trainer (arguments of lightning.pytorch.Trainer) has no "
            "'max_epoch'; did you mean 'trainer.max_epochs'?",
        ),
        (
            VICTIM,
            "seed_everythin",
            "the top level has no 'seed_everythin'; did you mean 'seed_everything'?",
        ),
        (
            VICTIM,
            "model.init_args.lr_schedular.init_args.T_max",
            "model.init_args "
            "(arguments of lightning_modules.VictimClassifier) has no 'lr_schedular'; did you mean "
            "'model.init_args.lr_scheduler'?",
        ),
        (
            VICTIM,
            "model.init_args.lr_scheduler.init_args.T_maxx",
            "(arguments of "
            "torch.optim.lr_scheduler.CosineAnnealingLR) has no 'T_maxx'; did you mean "
            "'model.init_args.lr_scheduler.init_args.T_max'?",
        ),
        (
            VICTIM,
            "trainer.callbacks.2.init_args.monitor",
            "trainer.callbacks is a list of 2, not a mapping with '2'",
        ),
        (VICTIM, "trainer.max_epochs.x", "trainer.max_epochs is 15, not a mapping with 'x'"),
        (
            SURROGATE,
            "model.init_args.weights.init_args.x",
            "model.init_args.weights is not in the YAML, so 'init_args.x' has nothing to go under; "
            "set 'model.init_args.weights' as a whole",
        ),
        (
            VICTIM,
            "epochs",
            "the top level has no 'epochs'; expected one of ckpt_path, data, "
            "model, seed_everything, test_after_fit, trainer",
        ),
        (
            SURROGATE,
            "data.init_args.budgt",
            "data.init_args (arguments of "
            "datamodules.TransferSetDataModule) has no 'budgt'; did you mean "
            "'data.init_args.budget'?",
        ),
    ],
)
def test_a_typo_is_named_with_what_was_expected(path, key, problem):
    assert problem in missing_setting(config(path), key)


def test_check_keys_names_the_preset_the_stage_and_the_key():
    victim = Stage("victim", VICTIM, set={"trainer.max_epochs": 2})
    typo = Stage("knockoff", SURROGATE, set={"data.init_args.budgett": 10})
    check_keys([victim], {"trainer.accelerator": "cpu"}, "p.yaml")  # all fine: no error
    with pytest.raises(
        ConfigError,
        match=r"^p\.yaml: stage knockoff: set key "
        r"'data\.init_args\.budgett' is not a setting of .*digits_natural_probs"
        r"\.yaml: .* did you mean 'data\.init_args\.budget'\?$",
    ):
        check_keys([victim, typo], {}, "p.yaml")
    # the top-level set applies to every stage: a key that one stage lacks is refused too
    with pytest.raises(
        ConfigError,
        match="p.yaml: stage victim: top-level set key 'data.init_args.budget' is not a setting of",
    ):
        check_keys([victim], {"data.init_args.budget": 10}, "p.yaml")
    with pytest.raises(ConfigError, match="stage victim: inputs key 'model.init_args.weight'"):
        check_keys([Stage("victim", VICTIM, inputs={"model.init_args.weight": "v"})], {}, "p")


@pytest.mark.parametrize(
    "text, message",
    [
        ("trainer: [unclosed", "config bad.yaml is not readable YAML: while parsing"),
        ("- a list\n", "config bad.yaml is not a mapping of settings (got a list)"),
    ],
)
def test_a_malformed_stage_yaml_is_one_line(tmp_path, text, message):
    Path("bad.yaml").write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)) as raised:
        check_keys([Stage("victim", "bad.yaml")], {}, "p.yaml")
    assert "\n" not in str(raised.value)


def test_a_record_resolves_its_paths_against_its_own_folder(tmp_path):
    """Written relative to the stage folder, or (older records) relative to the working
    directory of the run that wrote them: either way read from wherever the folder is now."""
    folder = tmp_path / "moved/stages/victim-abc"
    (folder / "checkpoints").mkdir(parents=True)
    for checkpoint in (
        "checkpoints/best.ckpt",
        "runs/out/stages/victim-abc/checkpoints/best.ckpt",
        "/elsewhere/stages/victim-abc/checkpoints/best.ckpt",
    ):
        record = {
            "key": "abc",
            "folder": "runs/out/stages/victim-abc",
            "checkpoint": checkpoint,
            "metrics": {"test/acc": 0.5},
        }
        (folder / "result.json").write_text(json.dumps(record))
        result = read_result(folder / "result.json")
        assert result["folder"] == str(folder)
        assert result["checkpoint"] == str(folder / "checkpoints/best.ckpt")
        assert result["metrics"] == {"test/acc": 0.5} and result["key"] == "abc"
    record["checkpoint"] = None  # a test stage saves no checkpoint
    (folder / "result.json").write_text(json.dumps(record))
    assert read_result(folder / "result.json")["checkpoint"] is None


def test_a_key_under_a_parameter_the_yaml_leaves_out_is_refused():
    """`set_dotted` would make `{init_args: {T_max: 8}}` with no class_path: set it whole."""
    victim = config(VICTIM)
    del victim["model"]["init_args"]["lr_scheduler"]
    assert missing_setting(victim, "model.init_args.lr_scheduler") is None
    del victim["trainer"]  # the Trainer is no class_path: a key under it can still be added
    assert missing_setting(victim, "trainer.accelerator") is None
    assert "did you mean 'trainer.accelerator'?" in missing_setting(victim, "trainer.acelerator")
    assert missing_setting(victim, "model.init_args.lr_scheduler.init_args.T_max") == (
        "model.init_args.lr_scheduler is not in the YAML, so 'init_args.T_max' has nothing to go "
        "under; set 'model.init_args.lr_scheduler' as a whole"
    )
