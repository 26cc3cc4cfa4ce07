"""Alembic migrations for ``worker_jobs``, shipped inside the package.

They keep their own version table, ``worker_bridge_alembic_version``, so they
live beside an application's own Alembic history without touching it.
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

VERSION_TABLE = "worker_bridge_alembic_version"


def alembic_config(engine: Engine) -> Config:
    """An Alembic config that runs this package's migrations on ``engine``."""
    config = Config()
    config.set_main_option("script_location", "worker_bridge:migrations")
    config.attributes["engine"] = engine
    return config


def upgrade_database(engine: Engine, revision: str = "head") -> None:
    """Apply the migrations up to ``revision``; a no-op when already there."""
    command.upgrade(alembic_config(engine), revision)


def downgrade_database(engine: Engine, revision: str) -> None:
    """Revert the migrations down to ``revision`` (``"base"`` drops everything)."""
    command.downgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None before the first migration."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()
