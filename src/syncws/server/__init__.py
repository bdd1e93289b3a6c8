"""The server: where it listens, admission (TLS, routing, Origin, auth, subprotocols), one
thread per connection, drain, ``WebSocketServer`` itself, and ``RequestHandler``, the
server's side of calls, with the ready-made endpoints.

Layer 5: imports every layer below (``cluster``, ``peer`` excepted, ``handlers``,
``calls``, ``client``, ``engine``, ``protocol``, the base modules). Threads:
``syncws-server`` accepts, ``syncws-conn-N`` runs each connection, ``syncws-cmd-N`` a
``RequestHandler``'s commands.
"""

from __future__ import annotations

from .server import AuthCheck, SubprotocolSelector, WebSocketServer

__all__ = ["AuthCheck", "SubprotocolSelector", "WebSocketServer"]
