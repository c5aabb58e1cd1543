"""
The tracker's persistent state: L{IStore} and its two backends.
"""

from trackermail.errors import ConfigError


def open_store(url: str, reactor=None, pool_size: int = 4, readonly: bool = False,
               prepared_statements: bool = True):
    """
    Build (not start) the store for a C{[database] url}: C{sqlite:///PATH}
    or C{postgresql://...}. C{readonly} opens an SQLite file read-only
    (never creating it). C{prepared_statements} keeps PostgreSQL's
    statements prepared on each connection.
    """
    if url.startswith("sqlite:///"):
        from trackermail.store.sqlite import MemoryStore, SQLiteStore

        path = url[len("sqlite:///"):]
        if path in (":memory:", ""):
            return MemoryStore()
        return SQLiteStore(path, reactor=reactor, readonly=readonly)
    if url.startswith(("postgresql://", "postgres://")):
        from trackermail.store.postgres import PostgresStore

        return PostgresStore(url, size=pool_size, reactor=reactor,
                             prepared_statements=prepared_statements)
    raise ConfigError(f"[database] url: unsupported database URL {url!r}")
