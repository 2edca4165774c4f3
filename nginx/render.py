"""Renders the loopback variant of nginx/nginx.conf, for tests and local runs.

nginx.conf is the one source: this only rewrites the lines that name container paths,
ports and hosts, so what the tests run is the production configuration, pointed at
processes on this machine. Every rewrite must match exactly as often as expected; when
nginx.conf changes shape, rendering fails loudly instead of testing something else.

    python nginx/render.py --prefix /tmp/lb --listen-port 18080 --status-port 18081 \
        --upstream 127.0.0.1:18001 --upstream 127.0.0.1:18002
    nginx -p /tmp/lb -c /tmp/lb/nginx.conf -g 'daemon off;'

From Python (nginx/ is not a package, so load this file by path):

    spec = importlib.util.spec_from_file_location("nginx_render", "nginx/render.py")
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

SOURCE = Path(__file__).resolve().with_name("nginx.conf")
PUBLIC_PORT = 80
STATUS_PORT = 8081
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")

_ADDRESS = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}$")


class RenderError(ValueError):
    """nginx.conf no longer has the shape this renderer rewrites."""


def render(
    source: str,
    *,
    prefix: Path,
    listen_port: int,
    status_port: int,
    upstreams: Sequence[str],
    user: str | None = None,
) -> str:
    """The loopback configuration: nginx.conf with local ports, upstreams and paths.

    `user` defaults to root when running as root (the test prefix lives in a private temp
    folder that an unprivileged worker could not enter) and is dropped otherwise, since
    nginx ignores it without super-user rights.
    """
    if not upstreams:
        raise ValueError("at least one upstream address is needed")
    for address in upstreams:
        if not _ADDRESS.match(address):
            raise ValueError(f"upstream {address!r} is not host:port")
    if user is None and os.geteuid() == 0:
        user = "root"
    prefix = prefix.resolve()

    text = _sub(source, r"^(\s*)user\s+[^;]+;\n", lambda m: _user_line(m, user), 1)
    # Each pattern stops before what the line keeps: ";", "default_server;", " json;".
    text = _sub(text, r"^(\s*)pid\s+[^;]+", _line(f"pid {prefix / 'nginx.pid'}"), 1)
    for kind in TEMP_PATHS:
        path = prefix / f"{kind}_temp"
        text = _sub(text, rf"^(\s*){kind}_temp_path\s+[^;]+", _line(f"{kind}_temp_path {path}"), 1)
    for port, local in ((PUBLIC_PORT, listen_port), (STATUS_PORT, status_port)):
        text = _sub(text, rf"^(\s*)listen\s+{port}\b", _line(f"listen 127.0.0.1:{local}"), 1)
    log = prefix / "access.log"
    text = _sub(text, r"^(\s*)access_log\s+/dev/stdout\b", _line(f"access_log {log}"), 1)
    return _sub(text, r"^(\s*)server\s+app:8080\s+([^;]*);", lambda m: _servers(m, upstreams), 1)


def write(
    prefix: Path,
    *,
    listen_port: int,
    status_port: int,
    upstreams: Sequence[str],
    user: str | None = None,
    source: Path = SOURCE,
) -> Path:
    """Renders into prefix/nginx.conf (creating prefix) and returns that path."""
    prefix.mkdir(parents=True, exist_ok=True)
    config = prefix / "nginx.conf"
    config.write_text(
        render(
            source.read_text(encoding="utf-8"),
            prefix=prefix,
            listen_port=listen_port,
            status_port=status_port,
            upstreams=upstreams,
            user=user,
        ),
        encoding="utf-8",
    )
    return config


def _sub(text: str, pattern: str, replace: Callable[[re.Match[str]], str], count: int) -> str:
    result, found = re.subn(pattern, replace, text, flags=re.MULTILINE)
    if found != count:
        raise RenderError(f"nginx.conf: expected {count} match(es) of {pattern!r}, found {found}")
    return result


def _line(replacement: str) -> Callable[[re.Match[str]], str]:
    """Replaces the matched start of a line, keeping its indentation."""
    return lambda match: f"{match[1]}{replacement}"


def _user_line(match: re.Match[str], user: str | None) -> str:
    return f"{match[1]}user {user};\n" if user else ""


def _servers(match: re.Match[str], upstreams: Sequence[str]) -> str:
    indent, parameters = match[1], match[2].split()
    # "resolve" is for names that Docker's DNS answers; local addresses are literal, and
    # nginx before 1.27.3 does not know the parameter.
    kept = " ".join(p for p in parameters if p != "resolve")
    return "\n".join(
        f"{indent}server {' '.join([address, kept]).strip()};" for address in upstreams
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render the loopback variant of nginx.conf.")
    parser.add_argument("--prefix", type=Path, required=True, help="folder for config, logs, temp")
    parser.add_argument("--listen-port", type=int, required=True)
    parser.add_argument("--status-port", type=int, required=True)
    parser.add_argument("--upstream", action="append", required=True, help="host:port, repeat")
    parser.add_argument("--user", help="worker user (default: root when run as root)")
    args = parser.parse_args(argv)
    config = write(
        args.prefix,
        listen_port=args.listen_port,
        status_port=args.status_port,
        upstreams=args.upstream,
        user=args.user,
    )
    print(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
