"""What serving costs: the prediction API behind HTTP (`main.py serve`: FastAPI + uvicorn, on
loopback) against the same API called in process, on the same victim, in the same run.

A fixed number of requests (`--requests`, each `--images` digits-size queries of 3 x 32 x 32)
is sent by 1, 8 and 32 concurrent clients (each its own key, so its own books), the server in
its own process; the in-process baseline answers the same requests in a loop. Printed: served
requests/s, p50 and p99 latency per request, and the ratio of served queries/s to in-process
queries/s. The victim is an untrained digits_cnn (the time of an answer does not depend on the
weights); books go to a SQLite ledger in a temporary folder, for both.

The idempotent path (each request with its own `Idempotency-Key`: the ledger checks it, digests
the images and keeps the reply) is timed against plain requests in the same run, alternating,
`--repeats` times each: printed is the median throughput of each and their ratio, and the
throughput of a replay (the same keyed requests again, answered from the books while they are
among the client's last 64 replies: with 1 client the 192 requests are not, and are answered
afresh).

    python benchmarks/served_throughput.py [--requests 192] [--images 32] [--clients 1 8 32]
"""

import argparse
import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch

from knockoff_lab.api import PredictionAPI
from knockoff_lab.api.keys import KeyRing, add_client, read_keys
from knockoff_lab.api.wire import NPY, from_npy, to_npy
from knockoff_lab.nets.networks import build_network

SHAPE = (3, 32, 32)


def victim_api(folder: Path) -> PredictionAPI:
    torch.manual_seed(0)
    net = build_network("digits_cnn", 10).eval()
    return PredictionAPI.around(net, ledger=str(folder / "ledger.sqlite"))


def serve(folder: Path, port: int) -> None:  # in the server's own process
    import uvicorn

    from knockoff_lab.api.server import ServerSettings, Service, create_app

    keys = str(folder / "keys.json")
    settings = ServerSettings(keys, port=port, image_shape=list(SHAPE), access_log=False)
    service = Service(victim_api(folder), settings, KeyRing(read_keys(keys)))
    uvicorn.run(create_app(service), host="127.0.0.1", port=port, log_level="warning")


def wait_ready(url: str, process, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.is_alive():
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit(f"the server at {url} did not start within {seconds} s")


def load(
    url: str, keys: list[str], bodies: list[bytes], keyed: str | None = None
) -> tuple[float, list[float]]:
    """(wall seconds, latency of each request) of `bodies` sent by len(keys) clients at once;
    `keyed`: each request with the Idempotency-Key `keyed-<its index>`."""

    def client(i: int) -> list[float]:
        latencies = []
        headers = {"Authorization": f"Bearer {keys[i]}", "Content-Type": NPY}
        with httpx.Client(base_url=url, timeout=120, headers=headers) as http:
            for j in range(i, len(bodies), len(keys)):
                body, start = bodies[j], time.perf_counter()
                named = {} if keyed is None else {"Idempotency-Key": f"{keyed}-{j}"}
                reply = http.post("/v1/answer", content=body, headers=named)
                latencies.append(time.perf_counter() - start)
                if reply.status_code != 200:
                    raise SystemExit(f"request failed ({reply.status_code}): {reply.text}")
                from_npy(reply.content)
        return latencies

    start = time.perf_counter()
    with ThreadPoolExecutor(len(keys)) as pool:
        latencies = [t for part in pool.map(client, range(len(keys))) for t in part]
    return time.perf_counter() - start, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=192)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--port", type=int, default=8471)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    requests = [rng.random((args.images, *SHAPE), dtype=np.float32) for _ in range(args.requests)]
    queries = args.requests * args.images
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "local").mkdir()
        local = victim_api(folder / "local")
        start = time.perf_counter()
        for images in requests:
            local.answer(torch.from_numpy(images), "local")
        baseline = queries / (time.perf_counter() - start)
        print(
            f"{args.requests} requests of {args.images} images, {torch.get_num_threads()} "
            f"threads; in process: {baseline:8.0f} queries/s"
        )
        keys = [add_client(folder / "keys.json", f"c{i}") for i in range(max(args.clients))]
        url = f"http://127.0.0.1:{args.port}"
        spawn = multiprocessing.get_context("spawn")
        server = spawn.Process(target=serve, args=(folder, args.port))
        server.start()
        try:
            wait_ready(url, server)
            bodies = [to_npy(images) for images in requests]
            load(url, keys[:1], bodies[:4])  # warm-up
            for clients in args.clients:
                walls: dict[str, list[float]] = {"plain": [], "keyed": [], "replay": []}
                for repeat in range(args.repeats):
                    wall, latencies = load(url, keys[:clients], bodies)
                    walls["plain"].append(wall)
                    name = f"c{clients}r{repeat}"
                    walls["keyed"].append(load(url, keys[:clients], bodies, name)[0])
                    walls["replay"].append(load(url, keys[:clients], bodies, name)[0])
                rate = {k: queries / statistics.median(v) for k, v in walls.items()}
                q = statistics.quantiles(latencies, n=100)
                print(
                    f"{clients:3d} clients: {rate['plain'] / args.images:7.1f} requests/s, p50 "
                    f"{1e3 * statistics.median(latencies):7.1f} ms, p99 {1e3 * q[98]:7.1f} ms,"
                    f"  served/in-process x{rate['plain'] / baseline:.2f},"
                    f"  idempotent/plain x{rate['keyed'] / rate['plain']:.3f},"
                    f"  replay/plain x{rate['replay'] / rate['plain']:.2f}"
                )
        finally:
            server.terminate()
            server.join(10)


if __name__ == "__main__":
    main()
