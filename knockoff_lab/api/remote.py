"""`RemoteAPI`: a served prediction API (`python main.py serve`) behind the same interface as the
in-process `PredictionAPI`, so an attack YAML runs against the service by changing its `api`
block:

    api:
      class_path: knockoff_lab.api.remote.RemoteAPI
      init_args: {url: "http://127.0.0.1:8470", key_env: KNOCKOFF_API_KEY}

The client is the key's: `answer(images, client)` ignores `client` (the server knows who asks
from the key alone). Images go as `.npy` bytes, split into requests of at most the server's
`max_queries` (a multiple of its batch size, so the victim sees the batches it would see in
process and answers are bitwise the same). `describe()` is the URL and the deployment id the
server reports (a digest of its victim's bytes and defences): the transfer set's cache key, so
a resumed attack reads the answers it already paid for and another deployment gets its own.

Owner-side evaluation (`victim_labels` for test/fidelity, `evaluate` for `DefenceReport`) needs
an owner key (`owner_key_env` or `owner_key_file`); the attacker's key cannot reach it. Keep
keys out of configs (LightningCLI saves the config beside the run): prefer `key_env` or
`key_file` to `key`.

`answer(images, request=NAME)` (the transfer set names each API batch by its cache and
position) sends each HTTP request with an `Idempotency-Key`, a digest of the name, the request's
offset and its bytes: the server answers a repeat from its books without charging it. Such a
request is retried after any transport failure, a lost reply included, and after a 409 (still
being answered); a killed attack that resumes sends the same keys and pays nothing twice.
Without a name, retries only where nothing was answered: a refused connection and a 429 for
the rate (after `Retry-After`).
"""

import hashlib
import json
import os
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from knockoff_lab.api.base import QueryAPI
from knockoff_lab.api.ledger import ClientRecord
from knockoff_lab.api.wire import NPY, from_npy, from_npz, to_npy
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.defences.base import QueryBatch


def _read_key(key: str | None, key_file: str | None, key_env: str | None, what: str) -> str | None:
    if key:
        return key
    if key_file:
        path = Path(key_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"{what} file {path} does not exist")
        return path.read_text().strip() or None
    if key_env:
        return os.environ.get(key_env) or None
    return None


class RemoteAPI(QueryAPI):
    """`url`: the served API (`http://127.0.0.1:8470`). The key: `key`, else the text of
    `key_file`, else the environment variable `key_env`. `owner_key*`: the same for an owner
    key (owner-side evaluation). `timeout`: seconds per request; `retries`: for a refused
    connection or a rate limit, at most this many, with backoff."""

    def __init__(
        self,
        url: str,
        key: str | None = None,
        key_file: str | None = None,
        key_env: str | None = "KNOCKOFF_API_KEY",
        owner_key: str | None = None,
        owner_key_file: str | None = None,
        owner_key_env: str | None = "KNOCKOFF_OWNER_KEY",
        timeout: float = 120.0,
        retries: int = 5,
    ):
        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"api url must start with http:// or https://, got {url!r}")
        self._key = _read_key(key, key_file, key_env, "api key")
        if self._key is None:
            raise ConfigError(f"no API key for {self.url}: set key_file, or ${key_env}")
        self._owner_key = _read_key(owner_key, owner_key_file, owner_key_env, "owner key")
        self.timeout, self.retries = timeout, retries
        self._http: httpx.Client | None = None
        self._info: dict | None = None

    def __repr__(self) -> str:  # never the key
        return f"RemoteAPI({self.url!r})"

    # -- the wire ------------------------------------------------------------------------------

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(base_url=self.url, timeout=self.timeout)
        return self._http

    def _request(
        self, method: str, path: str, owner: bool = False, idempotent: bool = False, **kwargs
    ) -> httpx.Response:
        key = self._owner_key if owner else self._key
        if key is None:
            raise ConfigError(
                f"owner-side evaluation through {self.url} needs an owner key "
                "(api.init_args.owner_key_file or $KNOCKOFF_OWNER_KEY)"
            )
        headers = {"Authorization": f"Bearer {key}", **kwargs.pop("headers", {})}
        for attempt in range(self.retries + 1):
            try:
                reply = self.http.request(method, path, headers=headers, **kwargs)
            except httpx.TransportError as err:
                # nothing sent (a refused connection), or a keyed request: safe to try again
                if attempt == self.retries or not (
                    idempotent or isinstance(err, httpx.ConnectError)
                ):
                    raise ConfigError(f"cannot reach the API at {self.url} ({err})") from None
                time.sleep(min(2**attempt * 0.2, 5))
                continue
            retry = reply.status_code == 429 or (idempotent and reply.status_code == 409)
            if retry and reply.headers.get("retry-after") and attempt < self.retries:
                time.sleep(min(float(reply.headers["retry-after"]), 30))  # nothing was counted
                continue
            return self._check(reply)
        raise AssertionError("unreachable")

    def _check(self, reply: httpx.Response) -> httpx.Response:
        if reply.is_success:
            return reply
        try:
            detail = reply.json().get("detail", reply.text)
        except ValueError:
            detail = reply.text[:200]
        if reply.status_code >= 500:
            raise RuntimeError(f"the API at {self.url} failed ({reply.status_code}): {detail}")
        raise ConfigError(
            f"the API at {self.url} refused the request ({reply.status_code}): {detail}"
        )

    @property
    def info(self) -> dict:
        """What the server says it serves (fetched once)."""
        if self._info is None:
            self._info = self._request("GET", "/v1/deployment").json()
        return self._info

    def _post_images(
        self, path: str, images: torch.Tensor, owner: bool = False, request: str | None = None
    ) -> bytes:
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
            raise ConfigError(f"queries must be a float tensor (N, channels, H, W), got {shape}")
        array = images.detach().cpu()
        array = array if array.dtype in (torch.float16, torch.float32) else array.float()
        body = to_npy(array.numpy())
        headers = {"Content-Type": NPY}
        if request is not None:  # bound to the bytes: the server checks them too
            headers["Idempotency-Key"] = hashlib.sha256(request.encode() + body).hexdigest()
        return self._request(
            "POST", path, owner, request is not None, content=body, headers=headers
        ).content

    def _chunks(self, images: torch.Tensor) -> list[torch.Tensor]:
        info = self.info
        per_request = int(info["max_queries"])
        batch = int(info.get("batch_size") or 1)
        if per_request >= batch:
            per_request -= per_request % batch  # whole server batches, as in process
        image_bytes = images[0].numel() * 4 + 1
        per_request = max(1, min(per_request, (int(info["max_body_bytes"]) - 256) // image_bytes))
        return list(images.split(per_request))

    # -- the interface of PredictionAPI ------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return int(self.info["num_classes"])

    @property
    def answers_probabilities(self) -> bool:
        """Whether the server answers probabilities (not labels), as its deployment says."""
        return bool(self.info.get("answers_probabilities", True))

    @property
    def victim_name(self) -> str:
        return f"{self.info['name']} at {self.url}"

    @property
    def client(self) -> str:
        """The server's name for this key's client."""
        return str(self.info["client"])

    def describe(self) -> str:
        return json.dumps(["remote", self.url, self.info["deployment"]])

    def to(self, device: torch.device | str) -> "RemoteAPI":
        return self  # the victim runs where it is served

    def check_data(self, data_name: str) -> None:
        """Checked by the server when this API has an owner key; an attacker cannot ask."""
        if self._owner_key is not None:
            self._request("POST", "/v1/owner/check_data", owner=True, json={"data": data_name})

    def answer(
        self, images: torch.Tensor, client: str = "default", request: str | None = None
    ) -> torch.Tensor:
        """What this key's client receives for `images`: (N, C) float32, NaN rows refused.
        `request`: the caller's name for this call; a repeat is answered from the books."""
        if len(images) == 0:
            return torch.empty(0, self.num_classes)
        answers, offset = [], 0
        for chunk in self._chunks(images):
            name = None if request is None else f"{request}@{offset}"
            answers.append(from_npy(self._post_images("/v1/answer", chunk, request=name)))
            offset += len(chunk)
        return torch.from_numpy(np.concatenate(answers).astype(np.float32, copy=False))

    def record(self, client: str = "default") -> ClientRecord:
        """This key's books (the server's; `client` is ignored). With an owner key, the full
        record (flagged and first_flagged included); else what the server shows a client."""
        if self._owner_key is not None:
            rows = self._request("GET", "/v1/owner/records", owner=True).json()["clients"]
            row = next((r for r in rows if r["client"] == self.client), None)
        else:
            row = self._request("GET", "/v1/record").json()
        row = row or {"asked": 0, "answered": 0, "refused": 0, "budget_left": None}
        left = row.get("budget_left")
        budget = None if left is None else left + row["asked"]
        return ClientRecord(
            self.client,
            row["asked"],
            row["answered"],
            row.get("flagged", 0),
            row["refused"],
            budget,
            row.get("first_flagged"),
        )

    def evaluate(self, images: torch.Tensor) -> QueryBatch:
        parts = [
            from_npz(self._post_images("/v1/owner/evaluate", chunk, owner=True))
            for chunk in self._chunks(images)
        ]
        fields = {
            f: torch.from_numpy(np.concatenate([p[f] for p in parts]))
            for f in ("posteriors", "answers", "flagged", "refused")
        }
        return QueryBatch(images=images, client="evaluation", state={}, **fields)

    def victim_labels(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                torch.from_numpy(from_npy(self._post_images("/v1/owner/labels", c, owner=True)))
                for c in self._chunks(images)
            ]
        )

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
