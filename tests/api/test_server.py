"""The prediction API as a service, on loopback: an attack through HTTP builds the transfer set
it builds in process, and a killed one resumes without paying twice; a restart keeps the books,
budgets and stateful defences' state; every kind of bad request gets its status and charges
nothing; a Sybil split across keys shows in the owner's per-client books; keys are hashed at
rest and never logged. Every wait has a deadline and every test an alarm: nothing can hang."""

import json
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import yaml

from datamodules import CropsPoolDataModule, DigitsDataModule, TransferSetDataModule
from datamodules.rounds import Round
from knockoff_lab.api import PredictionAPI
from knockoff_lab.api.keys import KeyRing, key_hash, read_keys
from knockoff_lab.api.remote import RemoteAPI
from knockoff_lab.api.server import ServerSettings, Service
from knockoff_lab.api.wire import NPY, from_npy, to_npy
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.defences import PRADA, TopK
from tests.conftest import REPO
from tests.serving import free_port, make_keys, run_server, wait_ready
from tests.toy_defence import RefuseAfter

TEST_SECONDS = 240  # per test, after the session's victim is trained
SHAPE = [3, 16, 16]


@pytest.fixture(autouse=True)
def _deadline():
    def expired(signum, frame):
        raise TimeoutError(f"test ran over {TEST_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(TEST_SECONDS)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@contextmanager
def serving(
    api: PredictionAPI, folder: Path, clients: dict[str, dict], log_level="warning", **settings
):
    """The API served by uvicorn in a thread on a free loopback port: (url, keys, service)."""
    keys = make_keys(folder / "keys.json", clients)
    options = {"image_shape": SHAPE, "access_log": False, **settings}
    service = Service(
        api,
        ServerSettings(str(folder / "keys.json"), port=free_port(), **options),
        KeyRing(read_keys(folder / "keys.json")),
    )
    with run_server(service, log_level) as url:
        yield url, keys, service


def books(service: Service, client: str) -> tuple[int, int, int, int]:
    """(asked, answered, flagged, refused) from the ledger, read in the service's own thread."""
    r = service.worker.submit(service.api.record, client).result(timeout=30)
    return r.asked, r.answered, r.flagged, r.refused


def served_api(victim_ckpt, folder: Path, defences=(), **kwargs) -> PredictionAPI:
    kwargs = {"ledger": str(folder / "ledger.sqlite"), "posterior_cache": None, **kwargs}
    return PredictionAPI(str(victim_ckpt), list(defences), **kwargs)


def transfer(api, cache_dir: str, budget: int = 100) -> TransferSetDataModule:
    dm = TransferSetDataModule(
        api=api,
        pool=CropsPoolDataModule(size=300, seed=0),
        victim_data=DigitsDataModule(),
        budget=budget,
        query_batch_size=32,
        cache_dir=cache_dir,
    )
    dm.setup()
    dm.grow_to(0)
    return dm


def post(url: str, key: str | None, body: bytes, path: str = "/v1/answer", **headers):
    headers = {"Content-Type": NPY, **headers}
    body = iter(body) if isinstance(body, list) else body  # a list: chunked, no length
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.post(f"{url}{path}", content=body, headers=headers, timeout=30)


def queries(n: int, seed: int = 0, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *SHAPE)).astype(dtype)


# -- an attack through HTTP ----------------------------------------------------------------------


def test_a_data_free_attack_needing_probabilities_is_refused_by_a_label_api_before_paying(
    victim_ckpt, tmp_path
):
    from knockoff_lab.attacks import DFME
    from knockoff_lab.defences import LabelOnly

    api = served_api(victim_ckpt, tmp_path, [LabelOnly()])
    with serving(api, tmp_path, {"alice": {}}) as (url, keys, service):
        remote = RemoteAPI(url, key=keys["alice"])
        assert remote.answers_probabilities is False
        with pytest.raises(ConfigError, match="DFME measures the disagreement on probabilities"):
            DFME().check_api(remote)
        assert books(service, "alice")[0] == 0


@pytest.mark.parametrize("stack", ["probs", "top2", "prada"])
def test_an_attack_through_http_builds_the_in_process_transfer_set(victim_ckpt, tmp_path, stack):
    defences = {"probs": [], "top2": [TopK(2)], "prada": [PRADA(min_queries=20, on_flag="flag")]}
    local = transfer(
        PredictionAPI(str(victim_ckpt), defences[stack], posterior_cache=None, ledger=None), "local"
    )
    api = served_api(victim_ckpt, tmp_path, defences[stack])
    with serving(api, tmp_path, {"alice": {}, "owner": {"owner": True}}) as (url, keys, service):
        remote = RemoteAPI(url, key=keys["alice"], owner_key=keys["owner"])
        dm = transfer(remote, "remote")
        assert np.array_equal(dm.indices, local.indices)
        assert torch.equal(dm.answers.float(), local.answers.float())  # bit for bit
        assert torch.equal(dm.victim_labels, local.victim_labels)  # owner-side, uncounted
        asked, answered, flagged, _ = books(service, "alice")
        assert (asked, answered) == (100, 100)
        assert flagged == local.api.record(local.client).flagged  # PRADA's verdicts agree
        assert remote.record().asked == 100
        assert remote.record().first_flagged == local.api.record(local.client).first_flagged
        assert books(service, "owner")[0] == 0  # evaluation is not charged


def test_a_killed_remote_attack_resumes_without_paying_twice(victim_ckpt, tmp_path, monkeypatch):
    local = transfer(PredictionAPI(str(victim_ckpt), posterior_cache=None, ledger=None), "local")
    with serving(
        served_api(victim_ckpt, tmp_path), tmp_path, {"alice": {}, "owner": {"owner": True}}
    ) as (url, keys, service):
        answer, calls = RemoteAPI.answer, []

        def killed_after_two(self, images, *args):
            if len(calls) == 2:
                raise KeyboardInterrupt("killed")
            calls.append(len(images))
            return answer(self, images, *args)

        monkeypatch.setattr(RemoteAPI, "answer", killed_after_two)
        with pytest.raises(KeyboardInterrupt):
            transfer(RemoteAPI(url, key=keys["alice"], owner_key=keys["owner"]), "remote")
        assert books(service, "alice")[0] == 64  # two batches of 32 paid for
        monkeypatch.setattr(RemoteAPI, "answer", answer)
        resumed = transfer(RemoteAPI(url, key=keys["alice"], owner_key=keys["owner"]), "remote")
        assert books(service, "alice")[:2] == (100, 100)  # the budget exactly: nothing twice
        assert torch.equal(resumed.answers.float(), local.answers.float())
        # describe() is the URL + the served deployment: the same service, the same cache key
        assert (
            resumed.folder.name
            == transfer(
                RemoteAPI(url + "/", key=keys["alice"], owner_key=keys["owner"]), "remote"
            ).folder.name
        )


def test_a_remote_attack_killed_after_its_answers_came_resumes_within_the_key_budget(
    victim_ckpt, tmp_path, monkeypatch
):
    """Killed after the server answered (and charged) a batch, before the attack stored it: the
    resumed attack sends the same idempotency keys and is answered from the books, so a key
    whose budget is the attack's still finishes."""
    local = transfer(PredictionAPI(str(victim_ckpt), posterior_cache=None, ledger=None), "local")
    clients = {"alice": {"budget": 100}, "owner": {"owner": True}}
    with serving(served_api(victim_ckpt, tmp_path), tmp_path, clients) as (url, keys, service):
        write, stored = Round.write, []

        def killed_before_the_third_is_stored(self, start, answers):
            if len(stored) == 2:
                raise KeyboardInterrupt("killed")
            stored.append(start)
            return write(self, start, answers)

        monkeypatch.setattr(Round, "write", killed_before_the_third_is_stored)
        with pytest.raises(KeyboardInterrupt):
            transfer(RemoteAPI(url, key=keys["alice"], owner_key=keys["owner"]), "remote")
        assert books(service, "alice")[:2] == (96, 96)  # three batches paid, two stored
        monkeypatch.setattr(Round, "write", write)
        resumed = transfer(RemoteAPI(url, key=keys["alice"], owner_key=keys["owner"]), "remote")
        assert books(service, "alice")[:2] == (100, 100)  # the third answered from the books
        assert torch.equal(resumed.answers.float(), local.answers.float())


def test_an_idempotency_key_is_answered_once_and_bound_to_its_images(bad_server):
    url, keys, service = bad_server
    x, key = to_npy(queries(4, seed=5)), {"Idempotency-Key": "batch-7"}
    before = books(service, "slow")[0]
    first, again = (post(url, keys["slow"], x, **key) for _ in range(2))
    assert first.status_code == again.status_code == 200 and first.content == again.content
    assert books(service, "slow")[0] == before + 4  # charged once
    other = post(url, keys["slow"], to_npy(queries(4, seed=6)), **key)
    assert other.status_code == 422 and "answered for other images" in other.text
    assert books(service, "slow")[0] == before + 4


def test_describe_names_the_deployment_not_its_secrets(victim_ckpt, tmp_path):
    with serving(served_api(victim_ckpt, tmp_path / "a"), tmp_path / "a", {"alice": {}}) as (
        url,
        keys,
        service,
    ):
        plain = RemoteAPI(url, key=keys["alice"]).describe()
        assert service.deployment in plain and url in plain
    guarded = served_api(victim_ckpt, tmp_path / "b", [TopK(2)])
    with serving(guarded, tmp_path / "b", {"alice": {}}) as (url, keys, _):
        other = RemoteAPI(url, key=keys["alice"])
        assert json.loads(other.describe())[2] != json.loads(plain)[2]  # another stack
        assert "TopK" not in other.describe()  # the defences' settings stay on the server
        with pytest.raises(ConfigError, match="needs an owner key"):
            other.victim_labels(torch.zeros(2, *SHAPE))


# -- a restart -----------------------------------------------------------------------------------


@contextmanager
def served_process(config: Path, port: int, log: Path):
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "main.py"), "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_ready(f"http://127.0.0.1:{port}", 120, lambda: process.poll() is None)
        yield process
    except BaseException:
        print(log.read_text())
        raise
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(15)


def serve_config(path: Path, victim_ckpt, port: int, defences: list, budget: int) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "api": {
                    "class_path": "knockoff_lab.api.PredictionAPI",
                    "init_args": {
                        "victim": str(victim_ckpt),
                        "budget": budget,
                        "ledger": "books.sqlite",
                        "posterior_cache": None,
                        "defences": defences,
                    },
                },
                "server": {"keys_file": "keys.json", "port": port, "image_shape": SHAPE},
            }
        )
    )
    return path


def test_a_restart_keeps_the_books_the_budget_and_defence_state(victim_ckpt, tmp_path):
    port = free_port()
    toy = [{"class_path": "tests.toy_defence.RefuseAfter", "init_args": {"limit": 30}}]
    config = serve_config(tmp_path / "serve.yaml", victim_ckpt, port, toy, budget=60)
    keys = make_keys(tmp_path / "keys.json", {"alice": {}, "bob": {}})
    url = f"http://127.0.0.1:{port}"
    x = queries(60)
    with served_process(config, port, tmp_path / "first.log"):
        first = from_npy(post(url, keys["alice"], to_npy(x[:20])).content)
        assert post(url, keys["bob"], to_npy(x[:5])).status_code == 200
    with served_process(config, port, tmp_path / "second.log"):
        second = from_npy(post(url, keys["alice"], to_npy(x[20:40])).content)
        assert post(url, keys["alice"], to_npy(x[40:60])).status_code == 200  # 60: the budget
        refused = post(url, keys["alice"], to_npy(x[:1]))
        assert refused.status_code == 429 and refused.json()["error"] == "budget"
        assert "60 asked, 1 more" in refused.text
    # the same queries in one process: the defence's state and the budget crossed the restart
    one = PredictionAPI(
        str(victim_ckpt), [RefuseAfter(30)], budget=60, posterior_cache=None, ledger=None
    )
    expected = one.answer(torch.from_numpy(x[:40]), "alice").numpy()
    assert np.array_equal(np.concatenate([first, second]), expected, equal_nan=True)
    assert np.isnan(second[10:]).all() and not np.isnan(second[:10]).any()
    report = subprocess.run(
        [
            sys.executable,
            str(REPO / "main.py"),
            "serve",
            "--config",
            str(config),
            "--report",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = {r["client"]: r for r in json.loads(report.stdout)["clients"]}
    fields = ("asked", "answered", "flagged", "refused", "first_flagged")
    assert {k: rows["alice"][k] for k in fields} == {
        "asked": 60,
        "answered": 30,
        "flagged": 30,
        "refused": 30,
        "first_flagged": 31,  # detection at the 31st query, across the restart
    }
    assert rows["bob"]["asked"] == 5 and rows["bob"]["first_flagged"] is None
    assert rows["alice"]["budget_left"] == 0


def test_a_server_killed_mid_request_charges_nothing_and_keeps_what_it_answered(
    victim_ckpt, tmp_path
):
    port = free_port()
    kill = [{"class_path": "tests.toy_defence.KillOnMark"}]
    config = serve_config(tmp_path / "serve.yaml", victim_ckpt, port, kill, budget=60)
    keys = make_keys(tmp_path / "keys.json", {"alice": {}, "owner": {"owner": True}})
    url, done = f"http://127.0.0.1:{port}", {"Idempotency-Key": "done"}
    x, marked = queries(5), queries(3)
    marked[1, 0, 0, 0] = -1000.0  # KillOnMark: SIGKILL inside the victim's worker

    def owner_books() -> dict:
        rows = httpx.get(f"{url}/v1/owner/records", headers={"X-API-Key": keys["owner"]})
        return {
            r["client"]: (r["asked"], r["answered"], r["refused"]) for r in rows.json()["clients"]
        }

    with served_process(config, port, tmp_path / "first.log") as process:
        answered = post(url, keys["alice"], to_npy(x), **done)
        assert answered.status_code == 200
        with pytest.raises(httpx.TransportError):  # the reply never comes
            post(url, keys["alice"], to_npy(marked))
        assert process.wait(30) == -signal.SIGKILL
    with served_process(config, port, tmp_path / "second.log"):
        assert owner_books() == {"alice": (5, 5, 0)}  # the killed call released, not charged
        replay = post(url, keys["alice"], to_npy(x), **done)  # a retry after the restart
        assert replay.content == answered.content and owner_books() == {"alice": (5, 5, 0)}


# -- bad requests ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_server(victim_ckpt, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    api = served_api(victim_ckpt, folder, budget=100)
    clients = {"alice": {}, "capped": {"budget": 10}, "slow": {}, "owner": {"owner": True}}
    with serving(
        api, folder, clients, max_queries=16, max_body_bytes=20 * 3 * 16 * 16 * 4 + 1024, rate=None
    ) as server:
        yield server


TOO_LARGE = to_npy(queries(21))  # over max_body_bytes (20 images)
BAD = {  # name: (client or a literal key, body, headers, status, error)
    "no key": (None, to_npy(queries(2)), {}, 401, "auth"),
    "wrong key": ("not-a-key", to_npy(queries(2)), {}, 401, "auth"),
    "basic auth": (None, to_npy(queries(2)), {"Authorization": "Basic YTpi"}, 401, "auth"),
    "too large": ("alice", to_npy(queries(21)), {}, 413, "size"),
    "too large, chunked": (
        "alice",
        [TOO_LARGE[i : i + 8192] for i in range(0, len(TOO_LARGE), 8192)],
        {},
        413,
        "size",
    ),
    "not npy": ("alice", b"hello", {}, 400, "payload"),
    "json body": ("alice", b'{"x": [1]}', {"Content-Type": "application/json"}, 415, "payload"),
    "float64": ("alice", to_npy(queries(2, dtype=np.float64)), {}, 422, "payload"),
    "int8": ("alice", to_npy(np.zeros((2, *SHAPE), np.int8)), {}, 422, "payload"),
    "big endian": ("alice", to_npy(queries(2).astype(">f4")), {}, 422, "payload"),
    "rank 3": ("alice", to_npy(queries(2)[0]), {}, 422, "payload"),
    "wrong image shape": (
        "alice",
        to_npy(np.zeros((2, 3, 28, 28), np.float32)),
        {},
        422,
        "payload",
    ),
    "no images": ("alice", to_npy(np.zeros((0, *SHAPE), np.float32)), {}, 422, "payload"),
    "over max_queries": ("alice", to_npy(queries(17)), {}, 422, "payload"),
    "truncated": ("alice", to_npy(queries(2))[:-10], {}, 422, "payload"),
    "NaN": (
        "alice",
        to_npy(
            np.where(np.arange(2)[:, None, None, None] == 1, np.nan, queries(2)).astype(np.float32)
        ),
        {},
        422,
        "payload",
    ),
    "inf": ("alice", to_npy(np.full((1, *SHAPE), np.inf, np.float32)), {}, 422, "payload"),
    "huge but finite": (
        "alice",
        to_npy(np.full((1, *SHAPE), 3e38, np.float32)),
        {},
        422,
        "payload",
    ),
    "bad idempotency key": (
        "alice",
        to_npy(queries(2)),
        {"Idempotency-Key": "a b"},
        400,
        "request",
    ),
    "over the key's budget": ("capped", to_npy(queries(11)), {}, 429, "budget"),
    "over the deployment's budget": ("alice", None, {}, 429, "budget"),  # see the test
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_request_gets_its_status_and_charges_nothing(bad_server, case):
    url, keys, service = bad_server
    who, body, headers, status, error = BAD[case]
    key = keys.get(who, who)
    if case == "over the deployment's budget":
        spent = books(service, "alice")[0]
        body = to_npy(queries(16))
        while spent + 16 <= 100:  # spend alice's budget (100) in whole requests
            assert post(url, key, body).status_code == 200
            spent += 16
    before = {c: books(service, c) for c in keys}
    reply = post(url, key, body, **headers)
    assert reply.status_code == status, reply.text
    assert reply.json()["error"] == error
    if key:
        assert key not in reply.text  # never echoed
    assert {c: books(service, c) for c in keys} == before  # nothing counted


def test_a_good_request_is_counted_once_and_answers_as_in_process(bad_server, victim_ckpt):
    url, keys, service = bad_server
    before = books(service, "slow")
    x = queries(5, seed=3)
    reply = post(url, keys["slow"], to_npy(x))
    assert reply.status_code == 200 and reply.headers["content-type"] == NPY
    expected = PredictionAPI(str(victim_ckpt), posterior_cache=None, ledger=None).answer(
        torch.from_numpy(x)
    )
    assert np.array_equal(from_npy(reply.content), expected.numpy())
    assert books(service, "slow")[:2] == (before[0] + 5, before[1] + 5)
    half = post(url, keys["slow"], to_npy(x.astype(np.float16)))  # float16 is accepted too
    assert half.status_code == 200 and books(service, "slow")[0] == before[0] + 10


@pytest.mark.parametrize("body", [b"[1, 2]", b'"digits"', b"{not json", b'{"data": 3}', b""])
def test_an_owner_endpoint_refuses_a_body_that_is_not_its_json_object(bad_server, body):
    url, keys, _ = bad_server
    reply = post(url, keys["owner"], body, "/v1/owner/check_data", **{"Content-Type": "x"})
    assert reply.status_code == 400 and reply.json()["error"] == "payload", reply.text


def test_the_owner_side_is_for_owner_keys_only(bad_server):
    url, keys, _ = bad_server
    headers = {"Authorization": f"Bearer {keys['alice']}"}
    assert httpx.get(f"{url}/v1/owner/records", headers=headers, timeout=30).status_code == 403
    assert post(url, keys["alice"], to_npy(queries(2)), "/v1/owner/labels").status_code == 403
    assert httpx.get(f"{url}/v1/owner/records", timeout=30).status_code == 401


def test_the_rate_limit_refuses_with_retry_after_and_charges_nothing(victim_ckpt, tmp_path):
    api = served_api(victim_ckpt, tmp_path)
    with serving(api, tmp_path, {"alice": {}}, max_queries=8, rate=1.0, burst=8) as (
        url,
        keys,
        service,
    ):
        assert post(url, keys["alice"], to_npy(queries(8))).status_code == 200
        reply = post(url, keys["alice"], to_npy(queries(8)))
        assert reply.status_code == 429 and reply.json()["error"] == "rate"
        assert int(reply.headers["retry-after"]) >= 1
        assert books(service, "alice")[0] == 8


# -- Sybils and keys -------------------------------------------------------------------------------


def test_a_sybil_split_across_keys_shows_in_the_per_client_books(victim_ckpt, tmp_path):
    api = served_api(victim_ckpt, tmp_path, budget=40)
    sybils = {f"sybil-{i}": {} for i in range(3)}
    with serving(api, tmp_path, {**sybils, "benign": {}, "owner": {"owner": True}}) as (
        url,
        keys,
        _,
    ):
        x = queries(120)
        for i, name in enumerate(sybils):  # 120 queries, each key under the budget of 40
            assert post(url, keys[name], to_npy(x[40 * i : 40 * i + 16])).status_code == 200
            assert post(url, keys[name], to_npy(x[40 * i + 16 : 40 * (i + 1)])).status_code == 200
        assert post(url, keys["sybil-0"], to_npy(x[:1])).status_code == 429
        assert post(url, keys["benign"], to_npy(queries(3, seed=9))).status_code == 200
        owner = RemoteAPI(url, key=keys["owner"], owner_key=keys["owner"])
        rows = owner._request("GET", "/v1/owner/records", owner=True).json()["clients"]
        table = {r["client"]: (r["asked"], r["answered"], r["budget_left"]) for r in rows}
        assert table == {
            "sybil-0": (40, 40, 0),
            "sybil-1": (40, 40, 0),
            "sybil-2": (40, 40, 0),
            "benign": (3, 3, 37),
        }
        mine = httpx.get(f"{url}/v1/record", headers={"X-API-Key": keys["sybil-1"]}, timeout=30)
        assert mine.json()["asked"] == 40 and "flagged" not in mine.json()  # own books only


def test_keys_are_hashed_at_rest_and_never_logged(victim_ckpt, tmp_path, capfd):
    with serving(
        served_api(victim_ckpt, tmp_path),
        tmp_path,
        {"alice": {}},
        log_level="info",
        access_log=True,
    ) as (url, keys, _):
        assert post(url, keys["alice"], to_npy(queries(2))).status_code == 200
        assert post(url, keys["alice"] + "x", to_npy(queries(2))).status_code == 401
        pasted = f"/v1/answer?api_key={keys['alice']}"  # a key in the URL: never accepted
        assert post(url, None, to_npy(queries(2)), pasted).status_code == 401
        assert post(url, keys["alice"], to_npy(queries(2)), pasted).status_code == 200
    stored = (tmp_path / "keys.json").read_text()
    assert keys["alice"] not in stored and key_hash(keys["alice"]) in stored
    assert (tmp_path / "keys.json").stat().st_mode & 0o077 == 0  # private to its owner
    out, err = capfd.readouterr()
    assert '"POST /v1/answer HTTP/1.1" 401' in out + err  # the access log is on, path only
    assert keys["alice"] not in out + err
    assert "alice" not in repr(RemoteAPI(url, key=keys["alice"]))
    assert keys["alice"] not in repr(RemoteAPI(url, key=keys["alice"]))


def test_add_client_prints_the_key_once(victim_ckpt, tmp_path):
    config = serve_config(tmp_path / "serve.yaml", victim_ckpt, free_port(), [], budget=10)
    made = subprocess.run(
        [
            sys.executable,
            str(REPO / "main.py"),
            "serve",
            "--config",
            str(config),
            "--add_client",
            "carol",
            "--client_budget",
            "7",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    key = made.stdout.strip()
    (entry,) = read_keys(tmp_path / "keys.json")
    assert (entry.client, entry.budget, entry.sha256) == ("carol", 7, key_hash(key))
    assert KeyRing([entry]).lookup(key) == entry and KeyRing([entry]).lookup(key[:-1]) is None
    again = subprocess.run(
        [
            sys.executable,
            str(REPO / "main.py"),
            "serve",
            "--config",
            str(config),
            "--add_client",
            "carol",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 2 and "already has a client 'carol'" in again.stderr


@pytest.mark.parametrize("name", ["", "null"])
def test_add_client_without_a_name_is_refused_not_served(victim_ckpt, tmp_path, monkeypatch, name):
    from knockoff_lab.core.errors import ConfigError
    from knockoff_lab.pipeline.serve import serve_main

    monkeypatch.setattr("uvicorn.run", lambda *args, **kwargs: pytest.fail("it served"))
    config = serve_config(tmp_path / "serve.yaml", victim_ckpt, free_port(), [], budget=10)
    with pytest.raises(ConfigError, match="--add_client needs a client name"):
        serve_main(["--config", str(config), "--add_client", name])
    assert not (tmp_path / "keys.json").exists()
