"""``python -m bench.peer_worker PEER``: one worker process of item 8 (``bench.peers``).

A module of its own so that the peers' apps live in ``bench.peers``, not in
``__main__`` (procrastinate warns about an app defined in the main module).
"""

from __future__ import annotations

import sys

from bench.peers import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
