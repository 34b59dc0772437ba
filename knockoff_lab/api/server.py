"""The prediction API as an HTTP service (FastAPI + uvicorn): the victim and its defences behind
API keys, with per-client budgets and books in the API's SQLite ledger.

Every request is authenticated before its body is read (`Authorization: Bearer KEY` or
`X-API-Key: KEY`; unknown or missing: 401), size-capped while it is read (413), and checked
strictly from its `.npy` header (`api.wire.read_array`: 400/422) and against the client's rate
(429 with `Retry-After`) before anything is counted. Then one worker thread runs
`PredictionAPI.answer(images, client)` for the key's client: the ledger counts it, enforces the
deployment's budget and the key's own in one transaction (429), and keeps stateful defences'
per-client state, so books and defence state survive a restart, and a kill mid-request leaves
nothing charged (`api.ledger`). Refused or failed requests charge nothing. A request with an
`Idempotency-Key` header is answered once: sent again with the same images (a retry after a
lost reply, a resumed attack) it gets the stored answers and is charged nothing (409 while the
first is still being answered; 422 for the same key with other images).

One worker thread serialises the victim and the books: a client's queries reach its stateful
defences in the order they were answered, as in one process, and answers are bitwise those of
the in-process API (requests are not merged across clients: a convolution's rounding can depend
on its batch). Throughput comes from each request carrying a batch of queries.

Endpoints: `GET /health` (no key); `GET /v1/deployment` (what is served, the stable id of the
victim + defences, limits); `POST /v1/answer` (.npy images in, .npy float32 answers out, a NaN
row for a refused query); `GET /v1/record` (the caller's books); owner keys only:
`POST /v1/owner/evaluate`, `POST /v1/owner/labels`, `GET /v1/owner/records` (every client's
books: a Sybil split across keys shows there), `POST /v1/owner/check_data`.
"""

import asyncio
import json
import logging
import math
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import torch
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from knockoff_lab.api.keys import KeyEntry, KeyRing
from knockoff_lab.api.ledger import BudgetExhausted, RequestInFlight
from knockoff_lab.api.prediction import PredictionAPI
from knockoff_lab.api.wire import NPY, NPZ, WireError, read_array, to_npy, to_npz
from knockoff_lab.core.errors import ConfigError

logger = logging.getLogger("knockoff.serve")
IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass
class ServerSettings:
    """`keys_file`: the keys file (`api.keys`). `host`: 127.0.0.1 unless you mean to expose it.
    `image_shape`: (channels, H, W) every query must have (None: any). `max_queries`: images
    per request. `max_body_bytes`: request size cap (413). `rate`: queries per second per
    client (None: unlimited) with bursts of up to `burst` queries (default: a second's worth,
    at least `max_queries`). `name`: what clients see as the victim's name. `max_abs_value`:
    the largest magnitude a query value may have (queries are normalised images; a value far
    beyond is no image and could drive the victim to overflow). `access_log`: one line per
    request, its path without the query string (a key pasted into a URL is never written)."""

    keys_file: str
    host: str = "127.0.0.1"
    port: int = 8470
    name: str = "victim"
    image_shape: list[int] | None = None
    max_queries: int = 256
    max_body_bytes: int = 16 * 2**20
    rate: float | None = None
    burst: int | None = None
    max_abs_value: float = 1000.0
    access_log: bool = True

    def check(self) -> None:
        if self.max_queries < 1:
            raise ConfigError(f"server.max_queries must be >= 1, got {self.max_queries}")
        if not self.max_abs_value > 0:
            raise ConfigError(f"server.max_abs_value must be > 0, got {self.max_abs_value}")
        if self.max_body_bytes < 1024:
            raise ConfigError(f"server.max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        if self.rate is not None and self.rate <= 0:
            raise ConfigError(f"server.rate must be > 0 queries/s, got {self.rate}")
        if self.burst is not None and self.burst < self.max_queries:
            raise ConfigError(
                f"server.burst {self.burst} must be >= max_queries "
                f"{self.max_queries}: a full request could never pass"
            )


class Refusal(Exception):
    """A request refused with an HTTP status (nothing counted)."""

    def __init__(self, status: int, kind: str, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.kind, self.detail, self.headers = status, kind, detail, headers


class RateLimiter:
    """A token bucket of queries per client (in memory: a restart refills it)."""

    def __init__(self, rate: float | None, burst: int):
        self.rate, self.burst = rate, burst
        self.buckets: dict[str, tuple[float, float]] = {}

    def take(self, client: str, count: int) -> None:
        if self.rate is None:
            return
        now = time.monotonic()
        tokens, last = self.buckets.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < count:
            self.buckets[client] = (tokens, now)
            wait = math.ceil((count - tokens) / self.rate)
            raise Refusal(
                429,
                "rate",
                f"rate limit for client {client!r}: {self.rate:g} queries/s, retry in {wait} s",
                {"Retry-After": str(wait)},
            )
        self.buckets[client] = (tokens - count, now)


class Service:
    """The served deployment: the API, its keys and limits, and the one worker thread that
    touches the victim and the ledger."""

    def __init__(self, api: PredictionAPI, settings: ServerSettings, keys: KeyRing):
        settings.check()
        self.api, self.settings, self.keys = api, settings, keys
        self.shape = tuple(settings.image_shape) if settings.image_shape else None
        burst = settings.burst or max(settings.max_queries, math.ceil(settings.rate or 0))
        self.limiter = RateLimiter(settings.rate, burst)
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="victim")
        self.deployment = api.ledger.deployment  # digest of the victim's bytes + defences

    async def run(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self.worker, function, *args)

    # -- in the worker thread (the victim, the ledger) -------------------------------------

    def answer(self, entry: KeyEntry, images: np.ndarray, request: str | None) -> np.ndarray:
        queries = torch.from_numpy(images.astype(np.float32))
        try:
            answers = self.api.answer(queries, entry.client, request, entry.budget)
        except BudgetExhausted as err:
            raise Refusal(429, "budget", str(err)) from None
        except RequestInFlight as err:
            raise Refusal(409, "in_flight", f"{err}: retry", {"Retry-After": "1"}) from None
        except ConfigError as err:  # the request's fault (a reused request name, ...)
            raise Refusal(422, "request", str(err)) from None
        return answers.numpy().astype(np.float32, copy=False)

    def record(self, entry: KeyEntry, client: str | None = None) -> dict:
        record = self.api.record(client or entry.client)
        lefts = [b - record.asked for b in (self.api.ledger.budget, entry.budget) if b]
        left = min(lefts) if lefts else None
        return {
            "client": record.client,
            "asked": record.asked,
            "answered": record.answered,
            "refused": record.refused,
            "budget_left": left,
        }

    def records(self) -> list[dict]:
        budgets = {e.client: e.budget for e in self.keys.entries}
        out = []
        for r in self.api.ledger.records():
            caps = [b for b in (r.budget, budgets.get(r.client)) if b]
            out.append(
                {
                    "client": r.client,
                    "asked": r.asked,
                    "answered": r.answered,
                    "flagged": r.flagged,
                    "refused": r.refused,
                    "first_flagged": r.first_flagged,
                    "budget_left": min(caps) - r.asked if caps else None,
                }
            )
        return out

    def evaluate(self, images: np.ndarray) -> bytes:
        batch = self.api.evaluate(torch.from_numpy(images.astype(np.float32)))
        return to_npz(
            **{
                f: getattr(batch, f).numpy()
                for f in ("posteriors", "answers", "flagged", "refused")
            }
        )

    def labels(self, images: np.ndarray) -> np.ndarray:
        return self.api.victim_labels(torch.from_numpy(images.astype(np.float32))).numpy()

    # -- on the event loop --------------------------------------------------------------------

    async def images(self, request: Request, entry: KeyEntry) -> np.ndarray:
        """The request's images: size-capped while read, then strictly validated."""
        limit = self.settings.max_body_bytes
        if request.headers.get("content-type", NPY).split(";")[0].strip() != NPY:
            raise Refusal(415, "payload", f"send images as {NPY} (numpy .npy bytes)")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            raise Refusal(413, "size", f"a request body may hold at most {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise Refusal(413, "size", f"a request body may hold at most {limit} bytes")
            chunks.append(chunk)
        try:
            return read_array(
                b"".join(chunks),
                self.shape,
                self.settings.max_queries,
                self.settings.max_abs_value,
            )
        except WireError as err:
            raise Refusal(err.status, "payload", str(err)) from None


def bearer(request: Request) -> str | None:
    if key := request.headers.get("x-api-key"):
        return key.strip()
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def idempotency_key(request: Request) -> str | None:
    """The request's `Idempotency-Key` (1 to 128 of A-Z a-z 0-9 . _ : -), or None."""
    key = request.headers.get("idempotency-key")
    if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
        raise Refusal(400, "request", "Idempotency-Key must be 1 to 128 of A-Z a-z 0-9 . _ : -")
    return key


class WithoutQuery(logging.Filter):
    """Uvicorn's access lines with the path alone: a query string may hold a pasted key."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) == 5:
            address, method, path, version, status = record.args
            record.args = (address, method, str(path).split("?")[0], version, status)
        return True


def create_app(service: Service) -> FastAPI:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, WithoutQuery) for f in access.filters):
        access.addFilter(WithoutQuery())
    app = FastAPI(
        title="knockoff-lab prediction API", docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.service = service

    @app.exception_handler(Refusal)
    async def refused(request: Request, err: Refusal) -> JSONResponse:
        return JSONResponse({"error": err.kind, "detail": err.detail}, err.status, err.headers)

    def client(request: Request) -> KeyEntry:
        entry = service.keys.lookup(bearer(request))
        if entry is None:  # the key itself is never logged nor echoed
            raise Refusal(
                401,
                "auth",
                "missing or unknown API key (Authorization: Bearer KEY)",
                {"WWW-Authenticate": "Bearer"},
            )
        return entry

    Client = Annotated[KeyEntry, Depends(client)]

    def owner(entry: Client) -> KeyEntry:
        if not entry.owner:
            raise Refusal(403, "auth", "owner-side endpoint: needs an owner key")
        return entry

    Owner = Annotated[KeyEntry, Depends(owner)]

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/deployment")
    async def deployment(entry: Client) -> dict:
        s = service.settings
        return {
            "deployment": service.deployment,
            "name": s.name,
            "num_classes": service.api.num_classes,
            "image_shape": s.image_shape,
            "max_queries": s.max_queries,
            "max_body_bytes": s.max_body_bytes,
            "batch_size": service.api.batch_size,
            "answers_probabilities": service.api.answers_probabilities,  # as an API's docs say
            "client": entry.client,
        }

    @app.post("/v1/answer")
    async def answer(request: Request, entry: Client) -> Response:
        images = await service.images(request, entry)
        name = idempotency_key(request)
        service.limiter.take(entry.client, len(images))
        answers = await service.run(service.answer, entry, images, name)
        return Response(to_npy(answers), media_type=NPY)

    @app.get("/v1/record")
    async def record(entry: Client) -> dict:
        return await service.run(service.record, entry)

    @app.get("/v1/owner/records")
    async def records(entry: Owner) -> dict:
        return {"deployment": service.deployment, "clients": await service.run(service.records)}

    @app.post("/v1/owner/evaluate")
    async def evaluate(request: Request, entry: Owner) -> Response:
        images = await service.images(request, entry)
        return Response(await service.run(service.evaluate, images), media_type=NPZ)

    @app.post("/v1/owner/labels")
    async def labels(request: Request, entry: Owner) -> Response:
        images = await service.images(request, entry)
        return Response(to_npy(await service.run(service.labels, images)), media_type=NPY)

    @app.post("/v1/owner/check_data")
    async def check_data(request: Request, entry: Owner) -> dict:
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("data"), str):
            raise Refusal(400, "payload", 'send a JSON object {"data": "<data name>"}')
        name = body["data"]
        try:
            service.api.check_data(name)
        except ConfigError as err:
            raise Refusal(422, "data", str(err)) from None
        return {"ok": True}

    return app
