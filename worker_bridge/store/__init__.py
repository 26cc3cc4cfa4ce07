"""The only package that queries ``worker_jobs``: one interface, one implementation per database.

:class:`Store` (``base``) is the interface; ``postgresql`` and ``sqlite`` each
implement it for their database, and :func:`store_for` picks one once per
engine. Nothing outside this package checks which database it talks to.

- ``base``: the interface, and the queries both databases share;
- ``postgresql``, ``sqlite``: one implementation each;
- ``postgresql_statements``, ``postgresql_recovery``: PostgreSQL's statements in
  SQLAlchemy Core, each shared rule (pair lock, supersede, cancelled result) written once;
- ``schema``: the table, its column order, the texts both write, the claim and the finish;
- ``records``: what writes report back (``Recovered``, ``WrittenOutcome``);
- ``reports``: read-only listing, lineage and statistics;
- ``driver``: statements run on psycopg's own connection.
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from worker_bridge.errors import ConfigurationError
from worker_bridge.store.base import Store
from worker_bridge.store.postgresql import PostgreSQLStore
from worker_bridge.store.records import LostAttempt, Recovered, WrittenOutcome
from worker_bridge.store.reports import JobStats, JobSummary, Lineage
from worker_bridge.store.schema import cancellation_result
from worker_bridge.store.sqlite import SQLiteStore

_STORES: dict[str, Store] = {store.dialect: store for store in (PostgreSQLStore(), SQLiteStore())}


def store_for(bind: Engine | Connection | str) -> Store:
    """The store of an engine's (or connection's, or URL's) database."""
    if isinstance(bind, str):
        try:
            name = make_url(bind).get_backend_name()
        except ArgumentError as exc:
            raise ConfigurationError(
                "WORKER_BRIDGE_DATABASE_URL is not a SQLAlchemy URL "
                "(e.g. postgresql+psycopg://user@host/db)"
            ) from exc
    else:
        name = bind.dialect.name
    try:
        return _STORES[name]
    except KeyError:
        raise ConfigurationError(
            f"worker_bridge runs on PostgreSQL or SQLite, not {name!r}"
        ) from None


__all__ = [
    "JobStats",
    "JobSummary",
    "Lineage",
    "LostAttempt",
    "PostgreSQLStore",
    "Recovered",
    "SQLiteStore",
    "Store",
    "WrittenOutcome",
    "cancellation_result",
    "store_for",
]
