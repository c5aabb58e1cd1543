"""
Helpers the benchmarks share: scratch PostgreSQL databases and free ports.
"""

from __future__ import annotations

import os
import secrets
import socket


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def scratch_pg_database(prefix: str):
    """
    Create an empty database next to TRACKERMAIL_BENCH_PG (default
    postgresql:///test); return its URL and a function that drops it.
    """
    import psycopg2

    admin = os.environ.get("TRACKERMAIL_BENCH_PG", "postgresql:///test")
    name = f"{prefix}_{secrets.token_hex(3)}"
    conn = psycopg2.connect(admin)
    conn.autocommit = True
    conn.cursor().execute(f'CREATE DATABASE "{name}"')
    conn.close()

    def drop() -> None:
        c = psycopg2.connect(admin)
        c.autocommit = True
        c.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.close()

    return admin.rsplit("/", 1)[0] + "/" + name, drop
