"""Alembic environment: runs online only, on the engine handed in by the caller."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from worker_bridge.migrations import VERSION_TABLE
from worker_bridge.models import Base

# Any fixed number: migrations on PostgreSQL hold this advisory lock so that
# two `worker-bridge db upgrade` started together (two containers) run one
# after the other instead of racing on CREATE TABLE.
_MIGRATION_LOCK = 0x5742_4D49  # "WBMI"


def run_migrations_online() -> None:
    engine = context.config.attributes["engine"]
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK})
            connection.commit()
        try:
            context.configure(
                connection=connection,
                target_metadata=Base.metadata,
                version_table=VERSION_TABLE,
                render_as_batch=connection.dialect.name == "sqlite",
                transaction_per_migration=True,
            )
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
        finally:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK})
                connection.commit()


run_migrations_online()
