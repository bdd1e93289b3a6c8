"""What a server tells its operator: counters kept as connections and calls go, ``stats()``,
Prometheus metrics and a live status page.

Layer 4, beside ``peer`` and ``cluster``: imports ``handlers``, ``calls``, ``engine``,
``protocol`` and the base modules. Counting runs on whichever thread does the
counted thing, under one small lock per group of counters; reading them
(``stats()``, a scrape, the status page) is safe from any thread.
"""

from __future__ import annotations

from .counters import EndpointCounters, ServerCounters
from .requests import OUTCOMES, RequestCounters

__all__ = ["EndpointCounters", "ServerCounters", "RequestCounters", "OUTCOMES"]
