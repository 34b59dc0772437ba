"""The catalogue of bad inputs: each runs the real CLI (`main.main`, as `python main.py ...`) and
must exit 2 with one line on stderr naming what is at fault and what was expected, no traceback,
and nothing half-written: no file under runs/ but complete transfer-set chunks, no temporary file
(Lightning may have made an empty log folder when the error comes from the data's setup)."""

import errno
import io
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import knockoff_lab.core.atomic as atomic
from knockoff_lab.nets.networks import build_network
from knockoff_lab.pipeline.entry import main
from tests.conftest import CONFIGS
from tests.datamodules import layouts

GTSRB = ["fit", "--config", str(CONFIGS / "victim/from_scratch.yaml"), "--data.init_args.root"]
DIGITS = str(CONFIGS / "victim/digits_cnn.yaml")
SURROGATE = [
    "fit",
    "--config",
    str(CONFIGS / "surrogate/digits_natural_probs.yaml"),
    "--data.init_args.pool.init_args.size",
    "300",
    "--data.init_args.budget",
    "100",
    "--data.init_args.api.init_args.victim",
]
DEFENCES = ["--data.init_args.api.init_args.defences"]
DFME = ["--config", str(CONFIGS / "attacks/dfme.yaml")]
TRAIN = Path("data/gtsrb/GTSRB/Training")
TEST_TABLE = Path("data/gtsrb/GT-final_test.csv")


def checkpoint(
    arch: str = "digits_cnn",
    classes: int = 10,
    weights_of: str | None = None,
    hparams: bool = True,
    truncated: bool = False,
) -> str:
    """A VictimClassifier checkpoint `v.ckpt` (weights of `weights_of`, if given, under the
    hyper-parameters of `arch`), as Lightning saves one."""
    net = build_network(weights_of or arch, classes)
    saved: dict = {"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}
    if hparams:
        victim = "lightning_modules.VictimClassifier"
        saved["hyper_parameters"] = {"arch": arch, "num_classes": classes, "_class_path": victim}
    torch.save(saved, "v.ckpt")
    if truncated:
        layouts.truncate(Path("v.ckpt"))
    return str(Path("v.ckpt").resolve())


def gtsrb(change: Callable[[], object] = lambda: None) -> str:
    """A tiny GTSRB in its real layout under ./data, changed by `change`."""
    layouts.gtsrb(Path("data"))
    change()
    return "data"


def rename_classes() -> None:  # 0, 1, ... instead of 00000, 00001, ...
    for folder in TRAIN.iterdir():
        folder.rename(folder.with_name(str(int(folder.name))))


def flatten() -> None:  # data/GTSRB/... : the dataset's folder is data.root itself
    for entry in Path("data/gtsrb").iterdir():
        entry.rename(Path("data", entry.name))
    Path("data/gtsrb").rmdir()


def empty_class() -> None:
    for image in (TRAIN / "00007").glob("*.ppm"):
        image.unlink()


BAD = TRAIN / "00003/00001_00001.ppm"
CASES: dict[str, tuple[Callable[[], list[str]], str]] = {
    "missing root": (
        lambda: [*GTSRB, "nope"],
        "GTSRBDataModule: the dataset's folder not found under data.root=nope; "
        "looked at nope/gtsrb; expected <root>/gtsrb/ holding GTSRB/Training/000NN/"
        "*.ppm",
    ),
    "empty root": (
        lambda: [*GTSRB, (os.mkdir("empty"), "empty")[1]],
        "not found under data.root=empty; looked at empty/gtsrb; expected <root>/gtsrb/"
        " holding GTSRB/Training/000NN/*.ppm",
    ),
    "dataset not in its own folder": (
        lambda: [*GTSRB, gtsrb(flatten)],
        "the dataset's folder not found under data.root=data; "
        "looked at data/gtsrb; expected <root>/gtsrb/",
    ),
    "part of a dataset missing": (
        lambda: [*GTSRB, gtsrb(lambda: os.remove(TEST_TABLE))],
        f"GTSRBDataModule: gtsrb/GT-final_test.csv not found under "
        f"data.root=data; looked at {TEST_TABLE}; expected",
    ),
    "other layout": (
        lambda: [*GTSRB, gtsrb(rename_classes)],
        f"the 43 class folders 00000..00042 in {TRAIN} not found",
    ),
    "truncated image": (
        lambda: [*GTSRB, gtsrb(lambda: layouts.truncate(BAD))],
        f"unreadable image {BAD} (1 unreadable in",
    ),
    "not an image": (
        lambda: [*GTSRB, gtsrb(lambda: BAD.write_text("<html>404</html>"))],
        f"unreadable image {BAD} (1 unreadable in",
    ),
    "decompression bomb": (
        lambda: [*GTSRB, gtsrb(lambda: layouts.bomb(BAD))],
        f"unreadable image {BAD} (1 unreadable in {TRAIN}): over the limit of "
        "89,478,485 pixels (datamodules.images.MAX_PIXELS): Image size "
        "(400000000 pixels)",
    ),
    "symlink loop": (
        lambda: [*GTSRB, gtsrb(lambda: (BAD.unlink(), BAD.symlink_to(BAD.name)))],
        f"unreadable image {BAD} (1 unreadable in {TRAIN}): Too many levels of symbolic links",
    ),
    "empty class": (
        lambda: [*GTSRB, gtsrb(empty_class)],
        f"class folder {TRAIN}/00007 holds no images; every class needs",
    ),
    "victim missing": (
        lambda: [*SURROGATE, "nope.ckpt"],
        "victim checkpoint nope.ckpt does not exist",
    ),
    "victim truncated": (
        lambda: [*SURROGATE, checkpoint(truncated=True)],
        "v.ckpt is not a readable checkpoint: PytorchStreamReader failed",
    ),
    "victim of 5 classes": (
        lambda: [*SURROGATE, checkpoint(classes=5)],
        "v.ckpt has num_classes=5 but data.victim_data has 10",
    ),
    "victim of another arch": (
        lambda: [*SURROGATE, checkpoint(weights_of="gtsrb_5l")],
        "v.ckpt does not fit its arch digits_cnn (missing: features.",
    ),
    "victim not a checkpoint": (
        lambda: [*SURROGATE, checkpoint(hparams=False)],
        "v.ckpt is not a VictimClassifier checkpoint: expected",
    ),
    "ckpt_path missing": (
        lambda: ["test", "--config", DIGITS, "--ckpt_path", "nope.ckpt"],
        "ckpt_path nope.ckpt does not exist",
    ),
    "ckpt_path truncated": (
        lambda: ["test", "--config", DIGITS, "--ckpt_path", checkpoint(truncated=True)],
        "v.ckpt is not a readable checkpoint: PytorchStreamReader failed",
    ),
    "ckpt_path of 5 classes": (
        lambda: ["test", "--config", DIGITS, "--ckpt_path", checkpoint(classes=5)],
        "v.ckpt does not fit the model (arch=digits_cnn, num_classes=10): "
        "saved with arch=digits_cnn, num_classes=5 (shape: fc.weight",
    ),
    "ckpt_path of another arch": (
        lambda: ["fit", "--config", DIGITS, "--ckpt_path", checkpoint("gtsrb_5l", hparams=False)],
        "v.ckpt does not fit the model (arch=digits_cnn, num_classes=10)"
        ": saved with no arch recorded (missing: features.",
    ),
    "top_k above classes": (
        lambda: [
            *SURROGATE,
            checkpoint(),
            *DEFENCES,
            '[{"class_path": "knockoff_lab.defences.TopK", "init_args": {"k": 11}}]',
        ],
        "TopK: k must be in 1..10 (num_classes), got 11",
    ),
    "negative decimals": (
        lambda: [
            *SURROGATE,
            checkpoint(),
            *DEFENCES,
            '[{"class_path": "knockoff_lab.defences.Rounded", "init_args": {"decimals": -1}}]',
        ],
        "Rounded: decimals must be an integer >= 0, got -1",
    ),
    "val_fraction 0 with a val/ monitor": (
        lambda: [*SURROGATE, checkpoint(), "--data.init_args.val_fraction", "0"],
        "CompleteSetCheckpoint monitors 'val/acc', but data.val_fraction is 0 "
        "(no validation split)",
    ),
    "val_fraction too small for a validation split": (
        lambda: [*SURROGATE, checkpoint(), "--data.init_args.val_fraction", "0.001"],
        "data.val_fraction 0.001 of data.budget 100 leaves the first round's 100 queries no "
        "validation query: expected val_fraction >= 1/100",
    ),
    "budget 0": (
        lambda: [*SURROGATE, checkpoint(), "--data.init_args.budget", "0"],
        "data.budget must be >= 1 query, got 0",
    ),
    "query_batch_size 0": (
        lambda: [*SURROGATE, checkpoint(), "--data.init_args.query_batch_size", "0"],
        "data.query_batch_size must be >= 1, got 0",
    ),
    "DFME directions 0": (
        lambda: [
            *SURROGATE,
            checkpoint(),
            *DFME,
            "--data.init_args.attack.init_args.directions",
            "0",
        ],
        "attack directions must be >= 1, got 0",
    ),
    "DFME budget below one iteration's probes": (
        lambda: [*SURROGATE, checkpoint(), *DFME, "--data.init_args.budget", "100"],
        "data.budget 100 does not pay for one DFME iteration: its probe round alone is batch x "
        "(directions + 1) = 128 queries",
    ),
    "DFME asking an API that answers labels": (
        lambda: [
            *SURROGATE,
            checkpoint(),
            *DFME,
            "--data.init_args.budget",
            "200",
            "--data.init_args.attack.init_args.batch",
            "8",
            "--config",
            str(CONFIGS / "defences/label_only.yaml"),
        ],
        "data.attack: DFME measures the disagreement on probabilities, but this API answers "
        "labels (data.api.init_args.defences)",
    ),
    "a step-round attack stopped before its last round": (
        lambda: [
            *SURROGATE,
            checkpoint(),
            *DFME,
            "--data.init_args.budget",
            "200",
            "--data.init_args.attack.init_args.batch",
            "8",
            "--trainer.max_steps",
            "5",
        ],
        "trainer.max_steps 5 stops before the attack's 17 step rounds (one optimiser step "
        "each): its last queries would never be asked",
    ),
    "budget above pool": (
        lambda: [*SURROGATE, checkpoint(), "--data.init_args.budget", "301"],
        "data.budget 301 exceeds the pool's 300 images",
    ),
    "unknown defence": (
        lambda: [
            *SURROGATE,
            checkpoint(),
            *DEFENCES,
            '[{"class_path": "knockoff_lab.defences.Soft"}]',
        ],
        "data.init_args.api.init_args.defences.0.class_path: 'knockoff_lab.defences.Soft': "
        "module knockoff_lab.defences has no 'Soft'",
    ),
    "smoothing that resizes": (
        lambda: [
            *SURROGATE,
            checkpoint(),
            "--data.init_args.smoothing",
            '{"class_path": "knockoff_lab.attacks.QuerySmoothing", "init_args": {"transform": '
            '{"class_path": "torchvision.transforms.v2.Resize", "init_args": {"size": 20}}}}',
            "--data.init_args.budget",
            "100",
        ],
        "data.smoothing.transform Resize(size=[20]",
    ),
    "D-DAE assuming a defence it has no shadow answers for": (
        lambda: [
            *SURROGATE,
            checkpoint(),
            "--data.init_args.reader",
            '{"class_path": "knockoff_lab.attacks.DDAE", "init_args": {"assume": "MAD", '
            '"candidates": [{"class_path": "knockoff_lab.defences.Rounded"}]}}',
        ],
        "data.reader.assume 'MAD' has no shadow answers: expected none or one of the "
        "candidates ['Rounded']",
    ),
    "negative seed": (  # numpy refuses it only when the first round is drawn
        lambda: [*SURROGATE, checkpoint(), "--data.init_args.seed", "-1"],
        "data.seed must be >= 0, got -1",
    ),
    "unknown key": (
        lambda: [*SURROGATE, checkpoint(), "--data.init_args.budgett", "5"],
        "data.init_args: Option 'budgett' is not accepted",
    ),
    "unknown key in a file": (
        lambda: [
            "fit",
            "--config",
            DIGITS,
            "--config",
            (Path("x.yaml").write_text("trainer:\n  max_epoch: 3\n"), "x.yaml")[1],
        ],
        "does not accept option 'trainer.max_epoch'",
    ),
    "wrong type": (
        lambda: [*SURROGATE, checkpoint(), "--data.init_args.budget", "lots"],
        "data.init_args.budget: Expected a <class 'int'>. Got value: lots",
    ),
    "wrong type of a union": (
        lambda: ["fit", "--config", DIGITS, "--trainer.max_epochs", "many"],
        "trainer.max_epochs: Expected a <class 'int'>. Got value: many",
    ),
    "reproduce: a typo in a stage's set": (
        lambda: preset({"name": "victim", "config": DIGITS, "set": {"trainer.max_epoch": 1}}),
        f"p.yaml: stage victim: set key 'trainer.max_epoch' is not a setting of {DIGITS}: "
        "trainer (arguments of lightning.pytorch.Trainer) has no 'max_epoch'; did you mean "
        "'trainer.max_epochs'?",
    ),
    "reproduce: a typo in the top-level set": (
        lambda: preset({"name": "victim", "config": DIGITS}, {"model.init_args.lr": 0.1}),
        f"p.yaml: stage victim: top-level set key 'model.init_args.lr' is not a setting of "
        f"{DIGITS}: model.init_args (arguments of lightning_modules.VictimClassifier) has no "
        "'lr'; expected",
    ),
    "reproduce: a stage name outside output_dir": (
        lambda: preset({"name": "../../x", "config": DIGITS}),
        "stage name '../../x' must be letters, digits, '-', '_' or '.' (it names a folder under "
        "output_dir)",
    ),
    "reproduce: a malformed stage YAML": (
        lambda: preset(
            {"name": "victim", "config": (Path("s.yaml").write_text("a: [b"), "s.yaml")[1]}
        ),
        "stage victim: config s.yaml is not readable YAML: while parsing a flow sequence",
    ),
    "reproduce: an input naming no stage": (
        lambda: preset([victim_stage("victim"), attack_stage("attack", "victm")]),
        "stage 'attack' reads ['victm'], which run later or not at all",
    ),
    "reproduce: inputs in a cycle": (
        lambda: preset([attack_stage("a", "b"), attack_stage("b", "a")]),
        "stage 'a' reads ['b'], which run later or not at all",
    ),
    "reproduce: a grid variant's unknown input": (
        lambda: preset(
            [victim_stage("victim")],
            grids=[
                {
                    "name": "g",
                    "title": "G",
                    "victim": "digits",
                    "config": [ATTACK],
                    "inputs": {VICTIM_KEY: "victim"},
                    "axes": {"defence": {"none": {}, "odd": {"inputs": {VICTIM_KEY: "vic"}}}},
                    "metrics": {"acc": "test/acc"},
                }
            ],
        ),
        "stage 'g-odd' reads ['vic'], which run later or not at all",
    ),
}
ATTACK = str(CONFIGS / "surrogate/digits_natural_probs.yaml")
VICTIM_KEY = "data.init_args.api.init_args.victim"


def victim_stage(name: str) -> dict:
    return {"name": name, "config": DIGITS}


def attack_stage(name: str, victim: str) -> dict:
    return {"name": name, "config": ATTACK, "inputs": {VICTIM_KEY: victim}}


def preset(stage: dict | list[dict], settings: dict | None = None, **more) -> list[str]:
    """`main.py reproduce` of a preset `p.yaml` of these stages (into runs/reproduce)."""
    import yaml

    stages = stage if isinstance(stage, list) else [stage]
    text = {"output_dir": "runs/reproduce", "set": settings or {}, "stages": stages, **more}
    Path("p.yaml").write_text(yaml.safe_dump(text))
    return ["reproduce", "--config", "p.yaml"]


def fails(args: list[str], monkeypatch, capsys) -> str:
    """`python main.py ARGS` in this process: exit 2, one line on stderr (returned), no run."""
    monkeypatch.setattr(sys, "argv", ["main.py", *args])
    with pytest.raises(SystemExit) as exit:
        main()  # a bug would raise here, with its traceback
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    runs = Path("runs")
    kept = {"transfer_sets", "victim_posteriors", "api"}  # answered queries: the books and caches
    assert not [p for p in runs.rglob("*") if p.is_file() and not kept & set(p.parts)]
    assert not list(runs.rglob(".*.tmp"))
    return err.removeprefix("error: ").strip()


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_naming_the_culprit(case: str, monkeypatch, capsys):
    args, expected = CASES[case]
    assert expected in fails(args(), monkeypatch, capsys)
    assert not list(Path("runs").rglob("*.npy"))  # not one query asked


def test_a_class_path_outside_the_trusted_packages_is_refused(monkeypatch, capsys):
    """A config is code: a class from an untrusted package is never instantiated, unless the
    user widens the list for the run (the toy plugins under tests/ need it)."""
    toy = '[{"class_path": "tests.toy_defence.RefuseAfter", "init_args": {"limit": 5}}]'
    monkeypatch.delenv("KNOCKOFF_TRUSTED_MODULES")
    assert fails([*SURROGATE, checkpoint(), *DEFENCES, toy], monkeypatch, capsys).startswith(
        "data.init_args.api.init_args.defences.0.class_path: 'tests.toy_defence.RefuseAfter' is "
        "outside the trusted packages (torch, "
    )
    assert not Path("runs").exists()


def test_a_dataset_missing_from_the_data_root_fails_before_any_work(monkeypatch, capsys):
    """A detector's three datasets under one data root, OpenImages absent: the one line names
    it and where it was looked for, before the other two are read (no readability check ran)."""
    layouts.cubs200(Path("data"))
    layouts.imagenet(Path("data"))
    monkeypatch.setattr(
        "datamodules.on_disk.check_readable",
        lambda *a: pytest.fail("a dataset was read before the error"),
    )
    args = ["fit", "--config", str(CONFIGS / "detector/scratch.yaml")]
    for key in ("in_data", "out_data", "out_test_data"):
        args += [f"--data.init_args.{key}.init_args.root", "data"]
    message = fails(args, monkeypatch, capsys)
    assert message.startswith(
        "OpenImagesDataModule: the dataset's folder not found under data.root=data; looked at "
        "data/openimages; expected <root>/openimages/ holding a folder tree of images"
    ), message
    assert "get it from https://storage.googleapis.com/openimages" in message
    assert not Path("runs").exists()


class FullDisk(io.BytesIO):
    """A file on a full disk: half of the first write lands, then ENOSPC (not an io.FileIO, so
    numpy writes through `write`)."""

    def __init__(self, path: Path):
        super().__init__()
        self.file = open(path, "wb")

    def write(self, data) -> int:
        self.file.write(bytes(data)[: len(data) // 2])
        self.file.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fileno(self) -> int:
        return self.file.fileno()

    def close(self) -> None:
        self.file.close()
        super().close()


def test_full_disk_while_writing_a_cache_chunk(monkeypatch, capsys):
    opened: list[Path] = []

    def open_(path, mode="r", *args, **kwargs):  # the third answer file hits a full disk
        if "w" not in mode or not Path(path).name.startswith(".a"):
            return open(path, mode, *args, **kwargs)
        opened.append(Path(path))
        return FullDisk(path) if len(opened) == 3 else open(path, mode, *args, **kwargs)

    monkeypatch.setattr(atomic, "open", open_, raising=False)
    args = [*SURROGATE, checkpoint(), "--data.init_args.query_batch_size", "32"]
    message = fails(args, monkeypatch, capsys)
    chunk = opened[2].with_name(opened[2].name.removeprefix(".").rsplit(".", 2)[0])
    assert message.startswith(f"no space left on device for cache file {chunk}")
    kept = sorted(p.name for p in chunk.parent.glob("a*"))
    assert kept == ["a000000000-000000032.npy", "a000000032-000000064.npy"]  # complete ones
    assert not list(chunk.parent.glob(".*"))  # and no temporary file
    assert [np.load(chunk.parent / name).shape for name in kept] == [(32, 10), (32, 10)]


def test_full_disk_while_saving_a_checkpoint_keeps_the_last_one(monkeypatch, capsys):
    """Epoch 1's last.ckpt hits a full disk half-way: the run stops with one line, and epoch 0's
    last.ckpt (the resume point) is whole, with no temporary file beside it."""
    saves: list[Path] = []

    def open_(path, mode="r", *args, **kwargs):
        if "w" in mode and Path(path).name.startswith(".last.ckpt."):
            saves.append(Path(path))
            if len(saves) == 2:
                return FullDisk(path)
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(atomic, "open", open_, raising=False)
    monkeypatch.setattr(
        sys, "argv", ["main.py", "fit", "--config", DIGITS, "--trainer.max_epochs", "3"]
    )
    with pytest.raises(SystemExit) as exit:
        main()
    err = capsys.readouterr().err
    last = Path("runs/victim/digits_cnn/checkpoints/last.ckpt")
    assert exit.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: no space left on device for checkpoint {last.resolve()}"), err
    assert len(saves) == 2
    assert torch.load(last, weights_only=True)["epoch"] == 0  # epoch 0's, complete
    assert not list(Path("runs").rglob(".*.tmp"))


VICTIM = ["fit", "--config", str(CONFIGS / "victim/digits_cnn.yaml")]
LAMBDA = "--trainer.callbacks+=lightning.pytorch.callbacks.LambdaCallback"


@pytest.mark.parametrize(
    "args, message",
    [
        (  # a function under a trusted package, in a slot typed as a callable
            [*VICTIM, "--model.init_args.optimizer", '{"class_path": "torch.hub.load"}'],
            "model.init_args.optimizer.class_path: 'torch.hub.load' is a function, not a class",
        ),
        (  # a path jsonargparse would resolve attribute by attribute
            [*VICTIM, "--trainer.callbacks+=torch.os.system"],
            "trainer.callbacks+: 'torch.os.system': 'torch.os' is not a module",
        ),
        (  # a callable argument of a trusted class
            [*VICTIM, LAMBDA, "--trainer.callbacks.on_fit_start=torch.save"],
            "trainer.callbacks.on_fit_start: 'torch.save' is a function, not a class",
        ),
    ],
    ids=["function", "attribute walk", "callable argument"],
)
def test_a_config_builds_only_classes_defined_in_trusted_packages(
    args, message, monkeypatch, capsys
):
    assert fails(args, monkeypatch, capsys).startswith(message)


def test_an_untrusted_module_is_never_imported_by_a_config_or_a_checkpoint(
    tmp_path, monkeypatch, capsys
):
    """A local `hubconf.py` on the import path, named by a config or by the hyperparameters of a
    checkpoint that loads with weights_only: refused before the parser imports it."""
    (tmp_path / "hubconf.py").write_text("import pathlib\npathlib.Path('imported').touch()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("KNOCKOFF_TRUSTED_MODULES")
    net = build_network("digits_cnn", 10)
    saved = {"net." + k: v for k, v in net.state_dict().items()}
    torch.save({"state_dict": saved, "hyper_parameters": {"_class_path": "hubconf.Evil"}}, "h.ckpt")
    for route in (["--trainer.callbacks+=hubconf.Evil"], ["--ckpt_path", "h.ckpt"]):
        message = fails([*VICTIM, *route], monkeypatch, capsys)
        assert "'hubconf.Evil' is outside the trusted packages" in message, message
        assert not Path("imported").exists()


def test_a_resume_from_a_last_ckpt_that_is_a_pickle_is_one_line(monkeypatch, capsys):
    """`--ckpt_path last` resolves to the run's last.ckpt only when the fit starts: that file is
    read unpickling no code, and a pickle is one line naming it, the file left as it was."""
    import pickle
    from argparse import Namespace

    last = Path("runs/victim/digits_cnn/checkpoints/last.ckpt")
    last.parent.mkdir(parents=True)
    last.write_bytes(pickle.dumps({"state_dict": Namespace(a=1)}))
    before = last.read_bytes()
    monkeypatch.setattr(sys, "argv", ["main.py", *VICTIM, "--ckpt_path", "last"])
    with pytest.raises(SystemExit) as exit:
        main()
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: checkpoint {last.resolve()} is not a readable checkpoint"), err
    assert last.read_bytes() == before
    assert [p for p in Path("runs").rglob("*") if p.is_file()] == [last]
