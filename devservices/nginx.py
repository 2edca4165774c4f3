"""nginx: in the foreground, on a test config confined to its own directory, or on
nginx/nginx.conf itself as nginx/render.py renders it."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from mirakuru import TCPExecutor

from devservices.processes import (
    LOOPBACK,
    PROJECT_ROOT,
    STARTUP_TIMEOUT,
    Service,
    ServiceError,
    close_all,
    free_port,
)

NGINX = "/usr/sbin/nginx"


class Nginx(Service):
    """nginx in the foreground, confined to its own prefix directory.

    With ``confine=False`` the config is used as it is, with only ``daemon off`` added: it
    must itself put its pid, temp paths and ``access_log`` under ``prefix``, as the
    rendering of nginx/nginx.conf by nginx/render.py does.
    """

    def __init__(
        self, executable: str, prefix: Path, config_text: str, port: int, *, confine: bool = True
    ) -> None:
        prefix.mkdir(parents=True)
        self.prefix = prefix
        self.url = f"http://{LOOPBACK}:{port}"
        self.config_path = prefix / "nginx.conf"
        self.access_log_path = prefix / "access.log"
        # nginx's stub_status page, where the config has one (production() sets it).
        self.status_url: str | None = None
        log_path = prefix / "error.log"
        command = [executable, "-p", str(prefix), "-e", str(log_path)]
        if confine:
            (prefix / "tmp").mkdir()
            self.config_path.write_text(_confine_nginx_config(config_text, prefix))
        else:
            self.config_path.write_text(config_text)
            command += ["-g", "daemon off;"]
        log_file = log_path.open("a")
        executor = TCPExecutor(
            [*command, "-c", str(self.config_path)],
            host=LOOPBACK,
            port=port,
            timeout=STARTUP_TIMEOUT,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        super().__init__("nginx", executor, port, log_path, log_file)


_HTTP_BLOCK = re.compile(r"^\s*http\s*\{", re.MULTILINE)


def _confine_nginx_config(config_text: str, prefix: Path) -> str:
    """Point every path nginx would write (Debian builds in /var/lib, /var/log, /run) into
    ``prefix``: main-context lines go first, http-level ones into the ``http {`` block."""
    main = [
        "daemon off;",
        f"pid {prefix / 'nginx.pid'};",
        f"lock_file {prefix / 'nginx.lock'};",
        f"error_log {prefix / 'error.log'} notice;",
    ]
    if os.geteuid() == 0:
        # Workers would run as nobody, who cannot enter pytest's root-only (0700) tmp dirs.
        main.append("user root;")
    http = [f"access_log {prefix / 'access.log'};"]
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        http.append(f"{kind}_temp_path {prefix / 'tmp' / kind};")
    body = _HTTP_BLOCK.sub(
        lambda match: match.group(0) + "\n    " + "\n    ".join(http), config_text, count=1
    )
    return "\n".join(main) + "\n\n" + body


class NginxFactory:
    """``nginx_factory(config_text)`` starts nginx and waits until it listens on ``port``.

    ``config_text`` is a whole nginx.conf (``events {}``, ``http { ... }``) that listens on
    ``127.0.0.1:{nginx_factory.port}``, a free port renewed after every start; pass
    ``port=`` to use another. The factory adds ``daemon``, ``pid``, ``error_log``,
    ``lock_file``, ``user`` (as root) and, inside ``http {``, ``access_log`` and the
    ``*_temp_path`` directives, so the config must not set those itself.
    """

    def __init__(self, executable: str, directory: Path) -> None:
        self._executable = executable
        self._directory = directory
        self._instances: list[Nginx] = []
        self.port = free_port()

    def __call__(self, config_text: str, *, port: int | None = None) -> Nginx:
        port = self.port if port is None else port
        if str(port) not in config_text:
            raise ValueError(f"the nginx config must listen on 127.0.0.1:{port}")
        return self._start(config_text, port, confine=True)

    def production(self, upstreams: Sequence[str], *, port: int | None = None) -> Nginx:
        """Starts nginx on nginx/nginx.conf itself, rendered by nginx/render.py: listening on
        ``port`` (default ``self.port``), its status server on a free port (``status_url``),
        proxying to ``upstreams`` ("127.0.0.1:PORT" each), its JSON access log at
        ``access_log_path``."""
        port = self.port if port is None else port
        status_port = free_port()
        render = _nginx_render_module()
        config_text: str = render.render(
            render.SOURCE.read_text(encoding="utf-8"),
            prefix=self._prefix(port),
            listen_port=port,
            status_port=status_port,
            upstreams=upstreams,
        )
        nginx = self._start(config_text, port, confine=False)
        nginx.status_url = f"http://{LOOPBACK}:{status_port}/nginx_status"
        return nginx

    def _prefix(self, port: int) -> Path:
        return self._directory / f"nginx-{len(self._instances)}-{port}"

    def _start(self, config_text: str, port: int, *, confine: bool) -> Nginx:
        if port == self.port:
            self.port = free_port()
        nginx = Nginx(self._executable, self._prefix(port), config_text, port, confine=confine)
        self._instances.append(nginx)
        nginx.start()
        return nginx

    def close(self) -> None:
        close_all(self._instances)


def _nginx_render_module() -> ModuleType:
    """nginx/render.py, loaded by path: nginx/ is not a package."""
    spec = importlib.util.spec_from_file_location(
        "nginx_render", PROJECT_ROOT / "nginx" / "render.py"
    )
    if spec is None or spec.loader is None:
        raise ServiceError("cannot load nginx/render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
