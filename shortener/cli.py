"""The `shortener` command: serve | migrate | keys create."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import sysconfig
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shortener.config import ConfigError, Settings
from shortener.logs import configure_logging

if TYPE_CHECKING:
    from shortener.links.model import KeyInfo
    from shortener.store import Store

log = logging.getLogger("shortener")

TEMPORARY_METRICS_DIR = "SHORTENER_TEMPORARY_METRICS_DIR"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        configure_logging("info")
        log.error("bad setting: %s", exc)
        return 2
    configure_logging(settings.log_level)
    try:
        result: int = args.run(args, settings)
    except KeyboardInterrupt:
        return 130
    except ConfigError as exc:  # a setting only the servers can show wrong, such as the pooler's
        log.error("bad setting: %s", exc)
        return 2
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shortener", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_port, default=8080)
    serve.add_argument(
        "--workers", type=_workers, default=None, help="worker processes (SHORTENER_WORKERS)"
    )
    serve.set_defaults(run=_serve)

    migrate = commands.add_parser("migrate", help="bring the database schema up to date")
    migrate.set_defaults(run=_migrate)

    keys = commands.add_parser("keys", help="manage API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create an API key and print it")
    create.add_argument("--name", required=True)
    create.add_argument("--admin", action="store_true", help="the key sees and changes all links")
    create.set_defaults(run=_keys_create)
    listing = key_commands.add_parser("list", help="list API keys (never the keys themselves)")
    listing.set_defaults(run=_keys_list)
    revoke = key_commands.add_parser("revoke", help="revoke an API key at once and for good")
    revoke.add_argument("id", type=int, help="the key's id, as `keys list` shows it")
    revoke.set_defaults(run=_keys_revoke)

    export = commands.add_parser("export", help="write every link to standard output")
    export.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    export.set_defaults(run=_export)
    load = commands.add_parser("import", help="create links from a file, as links of one key")
    load.add_argument("file", help="the file to read")
    load.add_argument(
        "--format",
        choices=["jsonl", "csv", "shlink-csv", "yourls-csv", "bitly-csv"],
        default="jsonl",
    )
    load.add_argument(
        "--owner", type=int, required=True, help="the key's id, as `keys list` shows it"
    )
    load.set_defaults(run=_import)
    return parser


def _port(raw: str) -> int:
    port = int(raw)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError("must be 1 to 65535")
    return port


def _workers(raw: str) -> int:
    workers = int(raw)
    if workers < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return workers


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from shortener.web import server

    server.raise_open_files_limit()
    workers = args.workers or settings.workers
    _prepare_metrics_dir(workers)
    # Migrate once, before any worker starts; several instances starting at once are safe.
    asyncio.run(_migrate_store(settings))
    if workers > 1:
        _exec_gunicorn(args.host, args.port, workers)
    from shortener.app import create_app

    server.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        backlog=settings.backlog,
        keepalive_timeout=settings.keepalive_timeout,
        on_ready=lambda: log.info("serving on http://%s:%d", args.host, args.port),
    )
    return 0


def _prepare_metrics_dir(workers: int) -> None:
    """Before any worker starts: an empty folder for the workers' metric files.

    Files left by an earlier run would be summed into this one's figures, so they go. This
    runs before prometheus_client is imported, which writes into the folder at import.
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory is None:
        if workers == 1:
            return
        directory = tempfile.mkdtemp(prefix="shortener-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        # Made here, so removed by gunicorn's on_exit hook (conf/gunicorn.conf.py).
        os.environ[TEMPORARY_METRICS_DIR] = directory
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        if name.endswith(".db"):
            os.unlink(os.path.join(directory, name))


def _exec_gunicorn(host: str, port: int, workers: int) -> None:
    """Replaces this process with gunicorn's master, so signals reach it directly."""
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        str(gunicorn_config_path()),
        "--bind",
        bind,
        "--workers",
        str(workers),
        "shortener.app:serve_from_env",
    ]
    os.execv(sys.executable, command)


def gunicorn_config_path() -> Path:
    """conf/gunicorn.conf.py: from the environment, the checkout this code runs from (so an
    edit to it counts), or the installed copy."""
    explicit = os.environ.get("SHORTENER_GUNICORN_CONFIG")
    if explicit:
        return Path(explicit)
    checkout = Path(__file__).resolve().parent.parent / "conf" / "gunicorn.conf.py"
    if checkout.exists():
        return checkout
    return Path(sysconfig.get_path("data")) / "share" / "shortener" / "gunicorn.conf.py"


async def _migrate_store(settings: Settings) -> list[int]:
    from shortener.app import open_store
    from shortener.store import make_store

    store = make_store(settings)
    await open_store(store)
    try:
        return await store.migrate()
    finally:
        await store.close()


def _migrate(_args: argparse.Namespace, settings: Settings) -> int:
    applied = asyncio.run(_migrate_store(settings))
    print(f"applied migrations: {applied}" if applied else "schema is up to date")
    return 0


def _keys_create(args: argparse.Namespace, settings: Settings) -> int:
    key = asyncio.run(_create_key(settings, args.name, args.admin))
    print(f"created {'admin ' if args.admin else ''}key {args.name!r}; it is shown only once:")
    print(key)
    return 0


async def _create_key(settings: Settings, name: str, admin: bool) -> str:
    from shortener.auth import create_key

    async with _open_store(settings) as store:
        _, key = await create_key(store, name, admin)
    return key


def _keys_list(_args: argparse.Namespace, settings: Settings) -> int:
    async def keys() -> list[KeyInfo]:
        async with _open_store(settings) as store:
            return await store.list_keys()

    print("id\tname\tadmin\tcreated_at\tlast_used_at\trevoked")
    for key in asyncio.run(keys()):
        used = key.last_used_at.isoformat() if key.last_used_at else "-"
        print(
            f"{key.id}\t{key.name}\t{key.admin}\t{key.created_at.isoformat()}\t{used}"
            f"\t{key.revoked}"
        )
    return 0


def _keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    async def revoke() -> bool:
        async with _open_store(settings) as store:
            return await store.revoke_key(args.id, datetime.now(UTC))

    if not asyncio.run(revoke()):
        print(f"shortener: no live key with id {args.id}", file=sys.stderr)
        return 1
    print(f"revoked key {args.id}; every instance refuses it within seconds")
    return 0


def _export(args: argparse.Namespace, settings: Settings) -> int:
    from shortener.transfer.exporter import every_link
    from shortener.transfer.formats import EXPORT_FORMATS

    writer = EXPORT_FORMATS[args.format]

    async def export() -> None:
        async with _open_store(settings) as store:
            writer.header(sys.stdout)
            async for page in every_link(store):
                writer.write(page, sys.stdout)

    asyncio.run(export())
    return 0


def _import(args: argparse.Namespace, settings: Settings) -> int:
    from shortener.transfer.progress import progress_for

    path = Path(args.file)
    try:
        with path.open("rb") as counting:
            total = sum(1 for _ in counting)
    except OSError as exc:
        print(f"shortener: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 2
    with progress_for(total) as progress:
        report = asyncio.run(_import_file(settings, path, args.format, args.owner, progress))
    if report is None:
        print(f"shortener: no live key with id {args.owner}", file=sys.stderr)
        return 2
    for line, reason in report.rejected:
        print(f"line {line}: {reason}")
    print(
        f"imported {report.imported}, unchanged {report.unchanged}, rejected {len(report.rejected)}"
    )
    return 1 if report.rejected else 0


async def _import_file(
    settings: Settings, path: Path, file_format: str, owner: int, progress: Any
) -> Any:
    from shortener.cache.l1 import L1Cache
    from shortener.cache.redis import redis_tier
    from shortener.cache.tiered import TieredCache
    from shortener.links.policy import DestinationPolicy
    from shortener.transfer.formats import IMPORT_FORMATS
    from shortener.transfer.importer import Importer

    async with _open_store(settings) as store:
        if not any(key.id == owner and not key.revoked for key in await store.list_keys()):
            return None
        policy = DestinationPolicy(store, settings.blocklist, settings.private_targets)
        # New codes may be cached as unknown: they go to Redis and out to every worker.
        l2 = redis_tier(settings, L1Cache(0, 0, 0))
        cache = TieredCache(L1Cache(0, 0, 0), l2, store)
        try:
            with path.open(encoding="utf-8-sig", newline="") as stream:
                rows = IMPORT_FORMATS[file_format].read(stream)
                return await Importer(store, policy, settings.base_host, cache).run(
                    rows, owner, progress
                )
        finally:
            if l2 is not None:
                await l2.close()


@asynccontextmanager
async def _open_store(settings: Settings) -> AsyncIterator[Store]:
    """The store, migrated, for one command."""
    from shortener.app import open_store
    from shortener.store import make_store

    store = make_store(settings)
    await open_store(store)
    try:
        await store.migrate()
        yield store
    finally:
        await store.close()
