"""`main.py verify` and the configs of configs/ownership/: the suspect served behind a URL
(configs/serve/digits.yaml) and asked through `RemoteAPI`, every query in its books."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from jsonargparse import ArgumentParser

from knockoff_lab.core.errors import ConfigError
from knockoff_lab.ownership import Verifier
from knockoff_lab.pipeline.verify import verify_main
from tests.serving import digits_service, make_keys, run_server

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FRAGMENTS = sorted(
    p
    for p in (CONFIGS / "ownership").glob("*.yaml")
    if "class_path" in yaml.safe_load(p.read_text())
)


@pytest.mark.parametrize("path", FRAGMENTS, ids=lambda p: p.name)
def test_every_verifier_fragment_builds(path: Path):
    parser = ArgumentParser()
    parser.add_argument("--verifier", type=Verifier)
    built = parser.instantiate(parser.parse_object({"verifier": yaml.safe_load(path.read_text())}))
    assert isinstance(built.verifier, Verifier)


@pytest.fixture
def served(victim_ckpt, tmp_path):
    """The victim served as the suspect; the owner holds an ordinary client key of it."""
    keys = make_keys(tmp_path / "keys.json", {"owner": {}})
    service = digits_service(victim_ckpt, tmp_path, "--api.init_args.budget", "null")
    with run_server(service) as url:
        yield url, keys["owner"], service


def verify(url: str, owner: Path, out: Path) -> list[str]:
    return [
        "--config",
        str(CONFIGS / "ownership/verify_remote.yaml"),
        "--suspect.init_args.url",
        url,
        "--owner",
        str(owner),
        "--output",
        str(out),
    ]


def test_verify_asks_a_suspect_behind_a_url_and_the_books_agree(
    served, victim_ckpt, tmp_path, monkeypatch
):
    url, key, service = served
    monkeypatch.setenv("KNOCKOFF_API_KEY", key)
    blind = yaml.safe_load((CONFIGS / "ownership/di_blind.yaml").read_text())
    blind["init_args"].update(starts=3, steps=20)  # fewer queries: the books are the point
    short = ["--verifiers", json.dumps([blind])]
    verdicts = verify_main([*verify(url, victim_ckpt, tmp_path / "verdicts.json"), *short])
    assert json.loads((tmp_path / "verdicts.json").read_text()) == verdicts
    (blind,) = verdicts
    asked = service.worker.submit(service.api.record, "owner").result(30).asked
    assert blind["verifier"] == "di_blind" and blind["ownership/di_blind/queries"] == asked > 0
    assert 0 <= blind["ownership/di_blind/p_value"] <= 1


def test_a_refused_key_or_a_white_box_test_of_a_url_fails_before_any_query(
    served, victim_ckpt, tmp_path, monkeypatch
):
    url, key, service = served
    monkeypatch.setenv("KNOCKOFF_API_KEY", "not-a-key")
    with pytest.raises(ConfigError, match="refused the request"):
        verify_main(verify(url, victim_ckpt, tmp_path / "v.json"))
    monkeypatch.setenv("KNOCKOFF_API_KEY", key)
    mingd = [
        "--verifiers",
        json.dumps([yaml.safe_load((CONFIGS / "ownership/di_mingd.yaml").read_text())]),
    ]
    with pytest.raises(ConfigError, match="walk mingd needs the suspect's weights"):
        verify_main([*verify(url, victim_ckpt, tmp_path / "v.json"), *mingd])
    assert service.worker.submit(service.api.record, "owner").result(30).asked == 0
    assert not (tmp_path / "v.json").exists()


def test_main_py_verify_reports_a_mistake_in_one_line(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "KNOCKOFF_API_KEY"}
    proc = subprocess.run(
        [
            sys.executable,
            str(CONFIGS.parent / "main.py"),
            "verify",
            "--config",
            str(CONFIGS / "ownership/verify_remote.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: no API key for http://127.0.0.1:8470: set key_file, or $KNOCKOFF_API_KEY"
    ]
