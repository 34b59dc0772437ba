"""`python main.py verify`: is a suspect model a copy of the owner's? Every verifier of the
config asks the suspect (a checkpoint behind `knockoff_lab.api.PredictionAPI`, or a model
served elsewhere behind `knockoff_lab.api.remote.RemoteAPI`, with the owner's key), each query
counted in the suspect's books, and prints one JSON verdict per verifier.

    python main.py verify --config configs/ownership/verify_remote.yaml
    python main.py verify --config configs/ownership/verify_remote.yaml \\
        --suspect '{class_path: knockoff_lab.api.PredictionAPI, init_args: {victim: x.ckpt}}'

Everything the owner brings is checked before the first query (`ownership.check_evidence`):
the suspect's number of classes, the key (a URL that refuses it fails on its deployment
endpoint, which costs no query), private points overlapping public ones. DAWN needs the
accused client's watermarked queries: `watermark` and `dawn_pool`, as in
`lightning_modules.OwnershipReport`.
"""

import json
import sys
from pathlib import Path

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser

from datamodules.base import ImageDataModule
from knockoff_lab.api.base import QueryAPI
from knockoff_lab.core.atomic import atomic_write_text
from knockoff_lab.core.fragments import read_config
from knockoff_lab.defences.watermark import DawnWatermark
from knockoff_lab.ownership import Suspect, Verifier
from knockoff_lab.pipeline.trust import check_arguments, check_trusted
from lightning_modules.ownership_report import build_evidence, pool_marks, run_verifiers


def verify_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="main.py verify", exit_on_error=False, description=__doc__)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_argument("--suspect", type=QueryAPI, required=True)
    parser.add_argument("--owner", type=str, required=True, help="The owner's checkpoint.")
    parser.add_argument("--owner_data", type=ImageDataModule, required=True)
    parser.add_argument("--verifiers", type=list[Verifier], required=True)
    parser.add_argument("--points", type=int, default=500)
    parser.add_argument("--client", type=str, default="owner")
    parser.add_argument("--watermark", type=DawnWatermark | None, default=None)
    parser.add_argument("--dawn_pool", type=ImageDataModule | None, default=None)
    parser.add_argument("--dawn_queries", type=int, default=3000)
    parser.add_argument("--output", type=str | None, default=None, help="Verdicts as JSON.")
    return parser


def inlined(args: list[str]) -> list[str]:
    """Each `--config FILE` as its text with the fragments it names inlined (relative to it,
    `core.fragments`), as LightningCLI reads them."""
    args = list(args)
    for i, arg in enumerate(args):
        name, given, value = arg.partition("=")
        if name == "--config" and given:
            args[i] = "--config=" + yaml.safe_dump(read_config(value))
        elif arg == "--config" and i + 1 < len(args):
            args[i + 1] = yaml.safe_dump(read_config(args[i + 1]))
    return args


def verify_main(args: list[str] | None = None) -> list[dict]:
    args = sys.argv[2:] if args is None else args
    check_arguments(args)  # before the parser imports what they name
    args = inlined(args)
    parser = verify_parser()
    config = parser.parse_args(args)
    check_trusted(config.as_dict())
    built = parser.instantiate(config)
    evidence = build_evidence(built.owner, built.owner_data, built.points)
    if built.watermark is not None and built.dawn_pool is not None:
        evidence.marked = pool_marks(
            built.watermark, evidence.owner, built.dawn_pool, built.dawn_queries
        )
    suspect = Suspect(built.suspect, built.client)
    verdicts = [
        {"verifier": v.verifier, **v.metrics()}
        for v in run_verifiers(suspect, evidence, built.verifiers)
    ]
    text = json.dumps(verdicts, indent=1)
    if built.output:
        Path(built.output).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(built.output), text + "\n")
    print(text, flush=True)
    return verdicts
