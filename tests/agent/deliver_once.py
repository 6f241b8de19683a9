"""``python -m tests.agent.deliver_once CONFIG``: one delivery round, as ``serve`` runs it.

Started inside a network namespace next to DCMTK storescp (which cannot bind
127.0.0.1 alone); prints how many reports were delivered.
"""

from __future__ import annotations

import sys
from pathlib import Path

from agent.pipeline.deliver import Deliverer
from agent.runtime import open_runtime


def main(config: str) -> int:
    runtime = open_runtime(Path(config), migrate=False)
    try:
        deliverer = Deliverer(
            runtime.settings, runtime.sessions, runtime.instance_store(), "deliver-once"
        )
        print(deliverer.run_once())
    finally:
        runtime.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
