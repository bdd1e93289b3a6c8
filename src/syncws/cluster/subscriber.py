"""A node's subscriber: the loop of ``syncws-cluster-sub``, which reads the cluster's channel and delivers each send here.

It also keeps the node's :class:`~syncws.cluster.presence_cache.PresenceCache`
honest: trusted only while the subscription is confirmed, and told of every
presence change a node publishes.

Whatever arrives on the channel is untrusted (:mod:`syncws.cluster.untrusted`):
a message that is not a send or close-all a member would publish is dropped
with one warning per ``log_interval`` (the next says how many were
suppressed), and so is a delivery that fails. Only losing Redis ends the
inner loop, and then the subscriber resubscribes with backoff; a bug that
escapes even that is the :class:`~syncws.cluster.threads.Keeper`'s to report
and restart.

Threads: :meth:`Subscriber.run` is the subscriber thread's loop; the node's
``deliver`` and ``close_all`` run on it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional, Protocol, Union

from ..lograte import DEFAULT_INTERVAL, RateLimitedLog
from .presence import Backoff
from .presence_cache import PresenceCache
from .untrusted import CLOSE_ALL, PRESENCE, read_send

__all__ = ["Subscriber", "LocalNode"]

logger = logging.getLogger("syncws.cluster.cluster")  # the cluster's records: one logger to configure


class LocalNode(Protocol):
    """What the cluster needs of the server that makes this process a node."""

    def deliver(self, name: str, message: Union[str, bytes]) -> None:
        """Send ``message`` to every local connection of ``name``."""

    def close_all(self, code: int, reason: str) -> None:
        """Close every local connection."""


class Subscriber:
    """Reads the channel ``channel`` and hands each send to the node (see the module docstring).

    Args:
        redis: the cluster's redis-py client.
        channel: the cluster's channel (``syncws:<name>:all``).
        label: what log lines call the cluster.
        node: returns the local node, or None (nothing to deliver to).
        errors: redis-py's connection errors.
        max_payload: a send larger than this is dropped (the node's ``max_send_size``).
        subscribed: set once Redis confirmed the subscription.
        cache: the cluster's presence cache: trusted while the subscription
            is confirmed, told of each presence change read on the channel.
        tick: called at least every ``poll`` seconds (the keeper's check; the
            cluster sets it again at each start).
        poll: the longest wait for a message before ``tick``.
        log_interval: seconds between two warnings about junk (and about failed deliveries).
    """

    def __init__(
        self,
        redis: Any,
        channel: str,
        label: str,
        node: Callable[[], Optional[LocalNode]],
        errors: tuple[type[BaseException], ...],
        max_payload: int,
        subscribed: threading.Event,
        cache: PresenceCache,
        tick: Callable[[], None],
        poll: float = 1.0,
        log_interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self.redis, self.channel, self.label, self.node, self.errors = redis, channel, label, node, errors
        self.max_payload = max_payload
        self.subscribed, self.cache, self.tick, self.poll = subscribed, cache, tick, poll
        self.junk_log = RateLimitedLog(logger, log_interval)  # keyed by this subscriber
        self.failure_log = RateLimitedLog(logger, log_interval)
        self.dropped = 0  # messages dropped as unreadable (subscriber thread only)

    def run(self, stopping: threading.Event) -> None:
        """Subscribe, deliver every message, resubscribe with backoff when Redis is lost, until ``stopping`` (subscriber thread).

        ``stopping`` is the event of the start that spawned this thread: a
        thread left over from a stop that timed out never runs on into the
        next start's.
        """
        backoff = Backoff()
        lost_at: Optional[float] = None  # when the subscription was lost, until Redis confirms a new one
        while not stopping.is_set():
            pubsub = self.redis.pubsub()
            try:
                pubsub.subscribe(self.channel)
                while not stopping.is_set():
                    self.tick()
                    message = pubsub.get_message(timeout=self.poll)
                    if message is None:
                        continue
                    kind = message.get("type")
                    if kind == "message":
                        self.on_message(message.get("data"))
                    elif kind == "subscribe":
                        backoff.reset()
                        self.cache.trust()  # every presence change from now on is heard
                        self.subscribed.set()  # Redis confirmed: every publish from now on reaches us
                        if lost_at is not None:
                            # The outage's end, at the level of its start: an operator sees both or neither.
                            logger.warning(
                                "%s: subscribed again after %.1f s; sends published meanwhile did not reach this node", self.label, time.monotonic() - lost_at
                            )
                            lost_at = None
            except Exception as exc:  # Redis lost, or a reply redis-py could not read: a new connection either way
                self.cache.distrust()  # presence changes published from now on may be missed
                # Said once per outage at WARNING; each failed retry while it lasts only at DEBUG.
                level = logging.WARNING if lost_at is None else logging.DEBUG
                logger.log(level, "%s: lost the pub/sub connection (%s: %s); resubscribing", self.label, type(exc).__name__, str(exc)[:200])
                if lost_at is None:
                    lost_at = time.monotonic()
                stopping.wait(backoff.next())
            finally:
                if stopping.is_set():
                    self.cache.distrust()  # nobody listens for changes any more
                try:
                    pubsub.close()
                except Exception:  # a connection already broken: nothing to close cleanly
                    pass

    def on_message(self, data: Any) -> None:
        """Deliver one message read on the channel to this node, or drop it with a rate-limited warning. Never raises."""
        node = self.node()
        if node is None:
            return
        try:
            send = read_send(data, self.max_payload)
        except Exception as exc:  # Unreadable, and anything junk might still provoke: dropped, never the thread's end
            self.dropped += 1
            self.junk_log.log(self, logging.WARNING, "%s: unreadable message on the cluster channel dropped: %s", self.label, str(exc)[:200])
            return
        try:
            if send.kind == PRESENCE:
                self.cache.invalidate(send.name)
            elif send.kind == CLOSE_ALL:
                node.close_all(send.code, send.reason)
            else:
                node.deliver(send.name, send.message)
        except Exception as exc:  # a failure of this node's delivery must not end the cluster's sends here
            self.failure_log.log(self, logging.WARNING, "%s: delivering a cluster send on this node failed: %r", self.label, exc)
