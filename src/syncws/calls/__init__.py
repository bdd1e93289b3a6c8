"""Calls over a connection, with no socket of their own: the request and reply format
(``callformat``, the gateway's ``gateway``), the calls waited on (``calls``, ``future``,
``reassembly``) and the calls answered (``commands``, ``command_pool``).

Layer 3: imports ``engine``, ``protocol`` and the base modules. The server's
``RequestHandler`` (``server/``) and the peer's ``RemoteService`` (``peer/``) both
stand on it.
"""

from __future__ import annotations

from .calls import CallTable, PendingCall, RelayCall, RelaySink

__all__ = ["CallTable", "PendingCall", "RelayCall", "RelaySink"]
