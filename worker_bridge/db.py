"""Engines and sessions: how worker_bridge connects. No queries live here.

How an engine is set up depends on the database; the store of that database
knows (``Store.create_engine``), and this module asks it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from worker_bridge.store import store_for


def create_db_engine(url: str, **options: Any) -> Engine:
    """Create the engine worker_bridge uses for ``url`` (``options`` win over its own).

    On PostgreSQL every connection runs in UTC so that timestamps need no
    conversion; on SQLite foreign keys are switched on (off by default there)
    and every transaction takes the write lock up front.
    """
    return store_for(url).create_engine(url, **options)


def create_session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory bound to ``engine`` whose objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def safe_url(url: str) -> str:
    """``url`` with its password masked, for logs and error messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"
