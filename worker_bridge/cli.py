"""The ``worker-bridge`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from sqlalchemy.exc import OperationalError, SQLAlchemyError

from worker_bridge.bootstrap import get_bridge
from worker_bridge.db import safe_url
from worker_bridge.errors import WorkerBridgeError
from worker_bridge.migrations import current_revision, upgrade_database


class CommandError(Exception):
    """A failure to report as one line on stderr."""


def _db_upgrade(_args: argparse.Namespace) -> int:
    bridge = get_bridge()
    before = current_revision(bridge.engine)
    upgrade_database(bridge.engine)
    after = current_revision(bridge.engine)
    where = safe_url(bridge.settings.database_url)
    if before == after:
        print(f"worker_jobs is up to date (revision {after}) on {where}")
    else:
        print(f"migrated {where} from {before or 'empty'} to revision {after}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``worker-bridge``."""
    parser = argparse.ArgumentParser(
        prog="worker-bridge", description="Operate worker_bridge's worker_jobs table."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    db = commands.add_parser("db", help="database schema")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    upgrade = db_commands.add_parser("upgrade", help="create or migrate worker_jobs (idempotent)")
    upgrade.set_defaults(handler=_db_upgrade)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run a command; errors become one line on stderr and exit code 1."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Alembic logs every migration at INFO through its own logger.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except OperationalError as exc:
        url = safe_url(get_bridge().settings.database_url)
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else "connection failed"
        print(f"worker-bridge: cannot reach the database at {url}: {reason}", file=sys.stderr)
        return 1
    except (CommandError, WorkerBridgeError) as exc:
        print(f"worker-bridge: {exc}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        first = str(exc).strip().splitlines()[0]
        print(f"worker-bridge: database error: {first}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
