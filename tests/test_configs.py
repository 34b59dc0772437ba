"""Every LightningCLI YAML under configs/ parses; the embedded ones run end to end (one short
epoch). Fragments (trainer, logger, data, callbacks) are composed with a complete experiment;
attack and defence overlays with the embedded Knockoff attack."""

import contextlib
import dataclasses
import importlib
import inspect
import io
import os
from pathlib import Path

import pytest
import yaml

from knockoff_lab.core.checkpoints import load_state_dict_file
from knockoff_lab.core.fragments import read_config
from knockoff_lab.pipeline.cli import cli_main
from knockoff_lab.pipeline.reproduce import every_stage, read_preset
from tests.conftest import CONFIGS
from tests.lightning_modules.conftest import cv_run, detector_ckpt  # noqa: F401  (shared fixtures)
from tests.serving import digits_service, make_keys, run_server

BASE = CONFIGS / "victim/digits_cnn.yaml"
ATTACK = CONFIGS / "surrogate/digits_natural_probs.yaml"
EXPERIMENT_DIRS = {"pretrain", "victim", "surrogate", "detector", "ood"}
OTHER_DIRS = {"reproduce", "sweeps", "serve", "ownership"}  # not LightningCLI configs: below


def kind(path: Path) -> str:
    """What a YAML under configs/ is, by its content: an `experiment` (model and data), an
    `overlay` composed over one (`--config a --config b`), or a `fragment`, a value inside a
    config (a class with its arguments, or a list of them: core/fragments.py)."""
    content = yaml.safe_load(path.read_text())
    if isinstance(content, list) or set(content) <= {"class_path", "init_args"}:
        return "fragment"
    return "experiment" if path.parent.name in EXPERIMENT_DIRS else "overlay"


LIGHTNING = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name not in OTHER_DIRS)
OVERLAYS = [p for p in LIGHTNING if kind(p) == "overlay"]
ALL = [p for p in LIGHTNING if kind(p) != "fragment"]
NESTED = [p for p in LIGHTNING if kind(p) == "fragment"]


def over_attack(path: Path) -> bool:
    """An overlay of an attack (it changes the transfer set's data or callbacks that need one)."""
    text = path.read_text()
    return "data:" in text or "DefenceReport" in text or "EarlyStopping" in text


SHORT = [
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "2",
    "--trainer.limit_val_batches",
    "2",
    "--trainer.limit_test_batches",
    "2",
]


def config_args(path: Path) -> list[str]:
    if kind(path) == "experiment":
        return ["--config", str(path)]
    base = ATTACK if over_attack(path) else BASE
    return ["--config", str(base), "--config", str(path)]


def test_every_config_is_an_experiment_an_overlay_or_a_fragment():
    kinds = {p.relative_to(CONFIGS).as_posix(): kind(p) for p in LIGHTNING}
    assert {
        "victim/digits_cnn.yaml": "experiment",
        "defences/mad.yaml": "overlay",
        "callbacks/attack.yaml": "fragment",
        "data/digits.yaml": "fragment",
    }.items() <= kinds.items()


def settings(node, key: str = ""):
    """(dotted key, value) of every setting in a YAML tree, nested anywhere."""
    if isinstance(node, dict):
        for name, value in node.items():
            yield from settings(value, f"{key}.{name}" if key else str(name))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from settings(value, f"{key}.{i}")
    else:
        yield key, node


YAMLS = sorted({*ALL, *NESTED, *(CONFIGS / "serve").glob("*.yaml")})


PRESET_STAGES = [
    str(dataclasses.asdict(stage))
    for preset in (CONFIGS / "reproduce").glob("*.yaml")
    for stage in every_stage(read_preset(preset)["stages"])
]


@pytest.mark.parametrize("path", NESTED, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_nested_fragment_is_a_class_some_config_uses(path: Path):
    """A fragment (one class with its arguments, or a list of them) is named by at least one
    config, fragment or preset, by its path from there; one nothing names is dead code."""
    fragment = yaml.safe_load(path.read_text())
    classes = fragment if isinstance(fragment, list) else [fragment]
    assert all(isinstance(c, str) or "." in c["class_path"] for c in classes)
    texts = [(p.parent, p.read_text()) for p in CONFIGS.rglob("*.yaml") if p != path]
    texts += [(CONFIGS.parent, text) for text in PRESET_STAGES]  # families expanded
    from_root = path.relative_to(CONFIGS.parent).as_posix()
    named = [t for folder, t in texts if os.path.relpath(path, folder) in t or from_root in t]
    assert named, f"no config names {path.relative_to(CONFIGS)}"


def test_every_data_root_is_the_one_data_root():
    """One rule: every dataset lives in its own folder under one data root, so every config
    (victim, surrogate, detector, ood, fragments; in_data, pool, out blocks) says root: data."""
    roots = {
        (str(p.relative_to(CONFIGS)), key): value
        for p in YAMLS
        for key, value in settings(yaml.safe_load(p.read_text()))
        if key.rsplit(".", 1)[-1] == "root"
    }
    assert roots and set(roots.values()) == {"data"}, roots


def test_no_config_fixes_a_checkpoint_folder():
    """Checkpoints follow the run folder (pipeline/cli.py): no config names a dirpath."""
    fixed = [
        (str(p.relative_to(CONFIGS)), key)
        for p in YAMLS
        for key, _ in settings(yaml.safe_load(p.read_text()))
        if key.rsplit(".", 1)[-1] == "dirpath"
    ]
    assert not fixed


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


def test_the_public_model_config_runs_and_fine_tunes_a_victim(tmp_path: Path):
    public = cli_main(
        [
            "fit",
            "--config",
            str(CONFIGS / "pretrain/digits_cnn_photos.yaml"),
            *SHORT,
            "--data.init_args.size",
            "200",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--seed_everything",
            "1",
        ]
    )  # not the victim's seed: another init
    assert public.model.hparams.num_classes == 11  # one class per natural photo
    ckpt = public.trainer.checkpoint_callback.best_model_path
    victim = cli_main(
        [
            "fit",
            "--config",
            str(BASE),
            *SHORT,
            "--model.init_args.weights",
            ckpt,
            "--trainer.default_root_dir",
            str(tmp_path / "victim"),
        ]
    )
    start = load_state_dict_file(Path(ckpt))["features.0.weight"]
    moved = (victim.model.net.features[0].weight - start).abs().max()
    assert moved < 0.02  # two Adam steps of 3e-3 from the public model, not a fresh init
    assert victim.model.net.fc.out_features == 10


EMBEDDED_ATTACKS = sorted((CONFIGS / "surrogate").glob("digits_*.yaml"))
# the overlays that run on the embedded attack (the others name real datasets: they parse)
EMBEDDED_OVERLAYS = [p for p in OVERLAYS if over_attack(p) and "'root'" not in str(read_config(p))]


def small_pool(path: Path) -> list[str]:
    """A 400-crop pool for a crop-pool attack (its 6,000 crops cost seconds per test)."""
    crops = "CropsPoolDataModule" in str(read_config(path))
    return ["--data.init_args.pool.init_args.size", "400"] if crops else []


@pytest.mark.parametrize("path", EMBEDDED_ATTACKS, ids=lambda p: p.name)
def test_embedded_attack_config_runs(path: Path, victim_ckpt: Path):
    cli = cli_main(
        [
            "fit",
            "--config",
            str(path),
            *SHORT,
            "--data.init_args.api.init_args.victim",
            str(victim_ckpt),
            "--data.init_args.budget",
            "150",
            *small_pool(path),
        ]
    )
    metrics = cli.trainer.callback_metrics
    assert {"test/acc", "test/recovery", "test/fidelity"} <= set(metrics)


def attack_class(path: Path) -> type | None:
    """The query strategy an overlay names (None if it names none)."""
    attack = ((yaml.safe_load(path.read_text()).get("data") or {}).get("init_args", {})).get(
        "attack"
    )
    if not attack:
        return None
    module, name = attack["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("path", EMBEDDED_OVERLAYS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_attack_and_defence_overlays_run(path: Path, victim_ckpt: Path, request, tmp_path: Path):
    """Each overlay composes with the embedded attack and runs (two rounds of one epoch for a
    strategy, so the run stays short)."""
    rounds = (
        [
            "--data.init_args.attack.init_args.rounds",
            "2",
            "--trainer.max_epochs",
            "2",
            "--data.init_args.epochs_per_round",
            "1",
            "--data.init_args.val_fraction",  # JBDA's seed round is 5% of the budget: 8 queries
            "0.2",
        ]
        if (strategy := attack_class(path)) and "rounds" in inspect.signature(strategy).parameters
        else []
    )
    if strategy and strategy.round_unit == "step":  # a data-free attack: iterations that fit 150
        rounds = ["--data.init_args.attack.init_args.batch", "8"]
        rounds += ["--trainer.limit_train_batches", "1.0"]  # every round is a step
    own_pool = "pool" in (yaml.safe_load(path.read_text()).get("data") or {}).get("init_args", {})
    pool_args = [] if own_pool else small_pool(ATTACK)  # an overlay's own pool keeps its size
    configs = config_args(path)
    text = path.read_text()
    if "DetectorFilter" in text:  # the overlay, pointed at the shared trained detector
        text = text.replace(
            "runs/detector/digits_cv/checkpoints/last.ckpt",
            str(request.getfixturevalue("detector_ckpt")),
        )
    if "OwnershipReport" in text:  # the owner: the victim it steals from
        text = text.replace("runs/victim/digits_cnn/checkpoints/best.ckpt", str(victim_ckpt))
        text = text.replace("../", f"{path.parent.parent}/")
    if text != path.read_text():
        configs[-1] = str(tmp_path / path.name)
        Path(configs[-1]).write_text(text)
    cli = cli_main(
        [
            "fit",
            *configs,
            *SHORT,
            *rounds,
            "--data.init_args.budget",
            "150",
            "--data.init_args.api.init_args.victim",
            str(victim_ckpt),
            *pool_args,
        ]
    )
    assert {"test/acc", "test/recovery", "test/fidelity"} <= set(cli.trainer.callback_metrics)
    data = cli.datamodule
    assert data.api.record(data.client).asked == 150  # the budget, exactly, through the API
    if "OwnershipReport" in text:  # both verifiers asked the surrogate, and decided
        for verifier in ("di_blind", "dawn"):
            assert cli.trainer.callback_metrics[f"ownership/{verifier}/accused"] in (0, 1)
        assert cli.trainer.callback_metrics["ownership/di_blind/queries"] > 0


def test_the_watermark_check_tests_a_model_of_a_clean_api(victim_ckpt: Path):
    """configs/callbacks/watermark_check.yaml on the embedded attack (no DAWN in the API): the
    owner's key finds its would-be watermarked queries and tests the surrogate on them."""
    cli = cli_main(
        [
            "fit",
            "--config",
            str(ATTACK),
            "--config",
            str(CONFIGS / "callbacks/watermark_check.yaml"),
            *SHORT,
            "--data.init_args.budget",
            "400",
            "--data.init_args.api.init_args.victim",
            str(victim_ckpt),
            *small_pool(ATTACK),
        ]
    )
    metrics = cli.trainer.callback_metrics
    assert not cli.datamodule.api.defences  # a clean API
    assert metrics["watermark/queries"] > 0 and "watermark/p_value" in metrics


def test_the_served_api_and_the_attack_through_its_url_run(victim_ckpt, tmp_path, monkeypatch):
    """configs/serve/digits.yaml serves the victim; configs/serve/remote_attack.yaml, composed
    with the embedded attack, steals it through the URL: the budget, exactly, in the books."""
    keys = make_keys(tmp_path / "keys.json", {"alice": {}, "owner": {"owner": True}})
    service = digits_service(victim_ckpt, tmp_path)
    monkeypatch.setenv("KNOCKOFF_API_KEY", keys["alice"])
    monkeypatch.setenv("KNOCKOFF_OWNER_KEY", keys["owner"])
    with run_server(service) as url:
        cli = cli_main(
            [
                "fit",
                "--config",
                str(ATTACK),
                "--config",
                str(CONFIGS / "serve/remote_attack.yaml"),
                *SHORT,
                "--data.init_args.api.init_args.url",
                url,
                "--data.init_args.budget",
                "150",
            ]
        )
        assert {"test/acc", "test/fidelity"} <= set(cli.trainer.callback_metrics)
        assert service.worker.submit(service.api.record, "alice").result(30).asked == 150
