"""`python main.py serve`: the prediction API as an HTTP service (`api.server`).

    python main.py serve --config configs/serve/digits.yaml                      # serve
    python main.py serve --config configs/serve/digits.yaml --add_client alice   # a new key
    python main.py serve --config configs/serve/digits.yaml --report             # the books

A serve config has two blocks: `api` (a `knockoff_lab.api.PredictionAPI`: victim, defences,
budget, ledger) and `server` (`knockoff_lab.api.server.ServerSettings`: keys file, host, port,
limits). Any key can be
overridden on the command line (`--server.port 9000`). Class paths are checked against the
trusted packages before anything is built, as for LightningCLI configs.
"""

import json
import sys

from jsonargparse import ActionConfigFile, ArgumentParser

from knockoff_lab.api.keys import KeyRing, add_client, read_keys
from knockoff_lab.api.prediction import PredictionAPI
from knockoff_lab.api.server import ServerSettings, Service, create_app
from knockoff_lab.pipeline.trust import check_arguments, check_trusted


def serve_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="main.py serve", exit_on_error=False, description="Serve the prediction API over HTTP."
    )
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_argument("--api", type=PredictionAPI, required=True)
    parser.add_argument("--server", type=ServerSettings, required=True)
    parser.add_argument(
        "--add_client",
        type=str | None,
        default=None,
        help="Make a key for a new client, print it once, and exit.",
    )
    parser.add_argument(
        "--client_budget",
        type=int | None,
        default=None,
        help="With --add_client: the client's own query budget.",
    )
    parser.add_argument(
        "--owner",
        type=bool,
        default=False,
        help="With --add_client: an owner key (evaluation, every client's books).",
    )
    parser.add_argument(
        "--report",
        type=bool,
        default=False,
        help="Print every client's books for this deployment as JSON and exit.",
    )
    return parser


def build_service(config) -> Service:
    """The service of a parsed serve config (class paths checked, then built)."""
    parser = serve_parser()
    check_trusted(config.as_dict())
    built = parser.instantiate(config)
    settings = built.server
    return Service(built.api, settings, KeyRing(read_keys(settings.keys_file)))


def serve_main(args: list[str] | None = None) -> None:
    import uvicorn

    args = sys.argv[1:] if args is None else args
    check_arguments(args)  # before the parser imports what they name
    config = serve_parser().parse_args(args)
    named = any(arg.split("=")[0] == "--add_client" for arg in args)  # "" or null: never serve
    if named or config.add_client is not None:
        key = add_client(
            config.server.keys_file, config.add_client or "", config.client_budget, config.owner
        )
        print(
            f"client {config.add_client!r} added to {config.server.keys_file}; its key (shown "
            "only now, store it safely):",
            file=sys.stderr,
        )
        print(key)
        return
    service = build_service(config)
    if config.report:
        records = service.records()
        print(json.dumps({"deployment": service.deployment, "clients": records}, indent=1))
        return
    settings = service.settings
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: serving on {settings.host}, not loopback: put TLS in front of it",
            file=sys.stderr,
        )
    print(
        f"serving {settings.name} (deployment {service.deployment}, "
        f"{len(service.keys.entries)} keys) at http://{settings.host}:{settings.port}",
        flush=True,
    )
    uvicorn.run(
        create_app(service),
        host=settings.host,
        port=settings.port,
        access_log=settings.access_log,
        log_level="info",
    )
