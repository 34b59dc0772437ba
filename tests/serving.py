"""Serving a prediction API on loopback for tests: a free port, uvicorn in a thread, and every
wait with a deadline, so a failing server cannot hang the suite."""

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn

from knockoff_lab.api.keys import add_client
from knockoff_lab.api.server import Service, create_app
from knockoff_lab.pipeline.serve import build_service, serve_parser
from tests.conftest import CONFIGS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, seconds: float, alive=lambda: True) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("the server exited before it was ready")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"the server at {url} was not ready within {seconds} s")


def digits_service(victim: Path, folder: Path, *settings: str) -> Service:
    """configs/serve/digits.yaml serving `victim` on a free loopback port, its books and keys
    file in `folder` (make the keys first: the service reads them when built), no posterior
    cache; `settings`: more command-line overrides (`--api.init_args.budget`, `null`)."""
    config = serve_parser().parse_args(
        [
            "--config",
            str(CONFIGS / "serve/digits.yaml"),
            "--api.init_args.victim",
            str(victim),
            "--api.init_args.ledger",
            str(folder / "books.sqlite"),
            "--api.init_args.posterior_cache",
            "null",
            "--server.keys_file",
            str(folder / "keys.json"),
            "--server.port",
            str(free_port()),
            *settings,
        ]
    )
    return build_service(config)


def make_keys(path: Path, clients: dict[str, dict]) -> dict[str, str]:
    """A key per client (name: add_client options), written hashed to the keys file at `path`."""
    return {name: add_client(path, name, **options) for name, options in clients.items()}


@contextmanager
def run_server(service: Service, log_level: str = "warning") -> Iterator[str]:
    """`service` served by uvicorn in a thread on its settings' loopback port: its URL."""
    settings = service.settings
    config = uvicorn.Config(
        create_app(service),
        host="127.0.0.1",
        port=settings.port,
        log_level=log_level,
        access_log=settings.access_log,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.port}"
    try:
        wait_ready(url, 30, thread.is_alive)
        yield url
    finally:
        server.should_exit = True
        thread.join(15)
        service.worker.shutdown(wait=True)
