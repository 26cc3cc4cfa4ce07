"""Statements compiled once by SQLAlchemy and run on psycopg's own connection."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, cast

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.elements import ClauseElement

from worker_bridge.payload import json_dumps


class DriverStatement:
    """A Core statement compiled once and run on psycopg's own connection.

    For the statements that run once per job (the claim, the finish,
    ``schedule_job``'s insert), SQLAlchemy's work around each execution
    (execution context, parameter and result processing) costs more CPU than
    psycopg's whole round trip. The SQL is still the Core statement's,
    compiled by SQLAlchemy; only its execution skips the machinery. Rows come
    back as tuples; the ``json`` parameters are serialised here. Errors are
    raised as SQLAlchemy raises them, and a lost connection invalidates the
    pool as SQLAlchemy does, so callers handle them the same way. On any
    other driver or database the statement runs through SQLAlchemy.
    """

    def __init__(self, statement: Executable, *, json: Collection[str] = ()) -> None:
        self._statement = statement
        self._json = tuple(json)
        self._compiled: tuple[str, dict[str, Any]] | None = None

    def execute(self, connection: Connection, params: Mapping[str, Any]) -> Any:
        """Run on ``connection``; a cursor (or SQLAlchemy result) with fetchone and rowcount."""
        if connection.dialect.driver != "psycopg":
            return connection.execute(self._statement, dict(params))
        import psycopg

        if self._compiled is None:
            compiled = cast(ClauseElement, self._statement).compile(dialect=connection.dialect)
            # The statement's literal values (``attempts + 1``...) are bound once.
            self._compiled = (str(compiled), dict(compiled.params))
        sql, defaults = self._compiled
        values = {**defaults, **params}
        for name in self._json:
            values[name] = json_dumps(values[name])
        driver = connection.connection.driver_connection
        try:
            return driver.execute(sql, values)  # type: ignore[union-attr]
        except psycopg.Error as exc:
            lost = connection.dialect.is_disconnect(exc, driver, None)  # type: ignore[arg-type]
            if lost:
                connection.invalidate(exc)
                # The other pooled connections went down with this one, most
                # likely (a server restart): drop them too, as SQLAlchemy does.
                connection.engine.dispose()
            raise DBAPIError.instance(
                sql,
                values,
                exc,
                psycopg.Error,
                connection_invalidated=lost,
                dialect=connection.dialect,
            ) from exc
