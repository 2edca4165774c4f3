"""Gunicorn settings for `shortener serve --workers N` (the command passes bind and workers).

Every value that is also a shortener setting is read from shortener.config, its one source.
"""

from shortener.config import Settings

_settings = Settings.from_env()

# aiohttp's uvloop worker, listening with the backlog below (aiohttp's own drops it to 128).
worker_class = "shortener.worker.Worker"
backlog = _settings.backlog
# aiohttp's worker uses this as its keep-alive timeout; it must outlast nginx's upstream
# keep-alive, so that nginx never reuses a connection the app is closing.
keepalive = int(_settings.keepalive_timeout)
# SIGTERM: stop accepting, finish in-flight requests and flush clicks within this time.
graceful_timeout = 20
timeout = 30
accesslog = None
errorlog = "-"
loglevel = _settings.log_level
# gunicorn's own lines as the app's JSON (shortener/logs.py), master and workers alike.
logger_class = "shortener.worker.JsonLogger"
proc_name = "shortener"
# Gunicorn 27 opens a control socket at one fixed path per user; instances on one host
# would fight over it, and nothing here uses it.
control_socket_disable = True


def child_exit(_server: object, worker: object) -> None:
    """A worker died or was replaced: its live gauges must stop counting in /metrics."""
    from shortener.metrics import worker_exited

    worker_exited(worker.pid)  # type: ignore[attr-defined]


def on_exit(_server: object) -> None:
    """Removes the metrics folder `shortener serve` made for this run, if it made one."""
    import os
    import shutil

    from shortener.cli import TEMPORARY_METRICS_DIR

    directory = os.environ.get(TEMPORARY_METRICS_DIR)
    if directory:
        shutil.rmtree(directory, ignore_errors=True)
