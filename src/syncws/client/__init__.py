"""The client side of a connection: ``connect()`` (websocket-client's handshake, through
a proxy or on a Unix socket, then syncws's ``Connection``) and proxy URLs.

Layer 3, beside ``calls``: imports ``engine``, ``protocol`` and the base modules.
"""

from __future__ import annotations

from .client import ClientConnection, connect

__all__ = ["ClientConnection", "connect"]
