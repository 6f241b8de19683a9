"""The read-only web side of ``serve``: dashboard pages, ``/metrics`` and ``/healthz``."""

from agent.web.server import Dashboard, start_dashboard

__all__ = ["Dashboard", "start_dashboard"]
