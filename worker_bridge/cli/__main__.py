"""``python -m worker_bridge.cli``: the ``worker-bridge`` command."""

from __future__ import annotations

import sys

from worker_bridge.cli import main

if __name__ == "__main__":
    sys.exit(main())
