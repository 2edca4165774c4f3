"""Real servers on 127.0.0.1 for tests, benchmarks and load runs: one place that starts them.

Each starter runs a Debian binary (or the app itself) on a free port, waits until it answers,
and can stop, kill and start it again on the same port, so chaos runs can take it down::

    processes.py   free_port(), ServiceError, Service (a process under a mirakuru executor)
    postgres.py    PostgresServer: a cluster of its own through pg_ctl (as user postgres if root)
    redis.py       RedisServer: redis-server without persistence
    nginx.py       Nginx, NginxFactory: a confined test config, or nginx/nginx.conf rendered
    app.py         AppInstance (``python -m shortener serve``), HttpProcess, keys_create()
    topology.py    Topology: nginx in front of N instances on one PostgreSQL and Redis

tests/services.py wraps these in pytest fixtures; bench/ and k6/ use them directly (add the
checkout to ``sys.path``: this package is not installed). A new kind of server gets a module
of its own here with a class built on :class:`~devservices.processes.Service` (or, like
PostgresServer, with the same ``start``/``stop``/``kill``/``close``/``running`` methods).
"""
