"""The calling side of a node link: a connection to another node, for calls to the peers it holds.

A :class:`~syncws.request_handler.RequestHandler` that reaches a peer on
another node of its cluster sends the call over a :class:`NodeLink`: a
syncws client connection to that node's ``/_syncws/node`` endpoint (see
:class:`syncws.node.NodeLinkHandler`), opened on first use with the
cluster's token and kept. Replies come back on it in the usual format and
are handed to the owner's ``callback``, exactly as a local peer's replies
are; so the owner matches them to their calls, checks and assembles binary
parts, and fails the calls on the link at once when it drops.

What comes back on a link is untrusted like anything from the network: the
owner's ``callback`` takes it (a RequestHandler drops junk with a
rate-limited warning), and should the callback raise anyway, the message
is dropped with a rate-limited warning and the link reads on. A link whose
reading fails closes, and its calls fail at once; the next call opens a
new one.

Threads: ``syncws-node-link`` reads one link and calls the owner; sends are
safe from any thread.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Optional, Protocol

from ..client.client import ClientConnection, connect
from ..engine.connection import Message, Outgoing
from ..lograte import RateLimitedLog

__all__ = ["NodeLink", "LinkOwner"]

logger = logging.getLogger(__name__)

_junk_log = RateLimitedLog(logger)  # by link: messages its owner's callback failed on


class LinkOwner(Protocol):
    """Who gets a link's replies and hears when it drops: a RequestHandler."""

    def callback(self, client: NodeLink, message: Message) -> None: ...

    def link_closed(self, link: NodeLink) -> None: ...


class NodeLink:
    """One open link to the node ``node`` at ``url``, owned by ``owner``.

    It stands where a connection's handler stands in a call: it has
    ``write_message`` and ``connection``. Keepalive pings every ``ttl / 2``
    seconds drop a link to a node that froze without closing its sockets.
    Raises NotConnected (or HandshakeError) when the node cannot be reached;
    ``timeout`` bounds each step of opening it (10 s by default).
    """

    server: Optional[object] = None  # a link belongs to no server of this process

    def __init__(
        self,
        node: str,
        url: str,
        token: str,
        owner: LinkOwner,
        ttl: float,
        sslopt: Optional[dict[str, Any]] = None,
        timeout: Optional[float] = 10.0,
    ) -> None:
        self.node = node
        self.url = url
        self.owner = owner
        self.connection: ClientConnection = connect(
            url,
            timeout=timeout,
            header=[f"Authorization: Bearer {token}"],
            sslopt=sslopt,
            ping_interval=max(ttl / 2, 0.5),
            ping_timeout=max(ttl / 2, 0.5),
            max_message_size=None,  # replies come in parts of 1 MiB; the caller's max_reply_size bounds them
        )
        self._reader = threading.Thread(target=self._read, name="syncws-node-link", daemon=True)
        self._reader.start()

    @property
    def name(self) -> str:
        """For log lines: the node this link reaches."""
        return f"node {self.node}"

    def write_message(self, message: Outgoing, binary: bool = False) -> None:
        """Send a message on the link. Safe from any thread."""
        self.connection.send(message, binary)

    def _read(self) -> None:
        """Hand every reply to the owner until the link drops, then tell it (link thread)."""
        try:
            while True:
                message = self.connection.recv()
                if message is None:
                    break
                try:
                    self.owner.callback(self, message)
                except Exception as exc:  # one message the owner choked on is dropped, not the link
                    _junk_log.log(self, logging.WARNING, "link to node %s: message dropped: %r", self.node, exc)
                del message  # a large reply part is not kept while the next is awaited
        except Exception as exc:  # the link broke in a way recv() does not report as its end: close it
            logger.warning("link to node %s failed while reading (%r); closing it", self.node, exc)
            self.connection.abort()
        finally:
            _junk_log.forget(self, what=f"link to node {self.node}")
            logger.info("link to node %s closed (code %s)", self.node, self.connection.close_code)
            try:
                self.owner.link_closed(self)
            except Exception:  # the owner's cleanup failed: say so, the thread ends anyway
                logger.exception("link to node %s: failing its calls failed", self.node)

    def close(self) -> None:
        """Close the link (any thread); its calls fail with ConnectionClosed."""
        self.connection.close()

    def __repr__(self) -> str:
        return f"<NodeLink to {self.node} at {self.url}>"
