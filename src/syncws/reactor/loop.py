"""One thread that waits on many sockets and their deadlines at once: :class:`IOLoop`.

The selector engine's heart: instead of a thread per connection that wakes
at every tick to look at its deadlines, one ``syncws-io`` thread blocks in
``select()`` (epoll on Linux, kqueue on macOS, through :mod:`selectors`) on
every registered socket, for no longer than the earliest deadline in its
:class:`~syncws.reactor.timers.Timers`. A connection with nothing to read,
nothing to write and no deadline due costs no wake-up.

What runs on the loop thread: the reader and writer callbacks of ready
sockets, the timers that are due, and the calls other threads post with
:meth:`IOLoop.call_soon` (a socketpair wakes the loop for them). Every such
callback must be quick and must not block: handlers run on
:class:`~syncws.reactor.handler_pool.HandlerPool` workers, never here. One
that raises is logged and the loop goes on.

Threads: :meth:`IOLoop.start`, :meth:`IOLoop.stop`, :meth:`IOLoop.call_soon`
and :meth:`IOLoop.in_loop` are safe from any thread; :meth:`add_reader`,
:meth:`remove_reader`, :meth:`add_writer`, :meth:`remove_writer` and
:attr:`timers` belong to the loop thread (post them with ``call_soon``
from elsewhere).
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
from collections import deque
from typing import Callable, Optional

from .timers import Timers

__all__ = ["IOLoop"]

logger = logging.getLogger(__name__)

Callback = Callable[[], None]

#: Bytes a reader receives at a time.
READ_SIZE = 1 << 16


class IOLoop:
    """A ``selectors`` loop on a thread of its own (see the module docstring).

    Args:
        name: the loop thread's name.
    """

    def __init__(self, name: str = "syncws-io") -> None:
        self.name = name
        #: The loop's deadlines: arm and cancel them on the loop thread.
        self.timers = Timers()
        #: Passes of the loop so far (each wake-up is one): what an idle loop must not add to.
        self.passes = 0
        #: Where the loop thread's readers receive into, one for all (what they read is copied
        #: out before the next read): 64 KiB for the loop, not for each of its sockets.
        self.read_buffer = bytearray(READ_SIZE)
        self._selector = selectors.DefaultSelector()
        # Callbacks per registered socket: (on readable, on writable), either None. Loop thread only.
        self._callbacks: dict[int, tuple[Optional[Callback], Optional[Callback]]] = {}
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._selector.register(self._wake_reader, selectors.EVENT_READ)
        # Synchronize access to _posted, _woken, _stopping and _thread.
        self._lock = threading.Lock()
        self._posted: deque[Callback] = deque()  # calls from other threads, run in order on the loop
        self._woken = False  # a wake-up byte is on its way: one is enough
        self._stopping = False
        self._thread: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ any thread

    def start(self) -> IOLoop:
        """Start the loop thread; returns at once. Once."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("this loop was started already")
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            thread = self._thread
        thread.start()
        return self

    def stop(self, timeout: Optional[float] = None) -> bool:
        """End the loop after its current pass and close its selector; True when its thread ended within ``timeout``.

        Sockets still registered are left open: they are their owners' to close.
        """
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._wake()
        if thread is None:
            self._close()
            return True
        if thread is not threading.current_thread():
            thread.join(timeout)
        return not thread.is_alive() or thread is threading.current_thread()

    def call_soon(self, call: Callback) -> None:
        """Run ``call`` on the loop thread, after the calls posted before it. Ignored once the loop is stopping."""
        with self._lock:
            if self._stopping:
                return
            self._posted.append(call)
        self._wake()

    def in_loop(self) -> bool:
        """True on the loop thread."""
        return threading.current_thread() is self._thread

    # ------------------------------------------------------------------ the loop thread

    def add_reader(self, sock: socket.socket, on_readable: Callback) -> None:
        """Call ``on_readable()`` whenever ``sock`` has something to read (or has closed)."""
        self._set(sock, on_readable, 0)

    def remove_reader(self, sock: socket.socket) -> None:
        """Stop watching ``sock`` for reading (back-pressure, or the connection is done)."""
        self._set(sock, None, 0)

    def add_writer(self, sock: socket.socket, on_writable: Callback) -> None:
        """Call ``on_writable()`` whenever ``sock`` takes more bytes (while a send waits for room)."""
        self._set(sock, on_writable, 1)

    def remove_writer(self, sock: socket.socket) -> None:
        """Stop watching ``sock`` for writing (everything is written)."""
        self._set(sock, None, 1)

    def _set(self, sock: socket.socket, callback: Optional[Callback], which: int) -> None:
        fd = sock.fileno()
        if fd < 0:
            return  # closed already: nothing to watch
        callbacks = list(self._callbacks.get(fd, (None, None)))
        callbacks[which] = callback
        events = (selectors.EVENT_READ if callbacks[0] else 0) | (selectors.EVENT_WRITE if callbacks[1] else 0)
        registered = fd in self._callbacks
        if events == 0:
            if registered:
                self._selector.unregister(fd)
                del self._callbacks[fd]
            return
        self._callbacks[fd] = (callbacks[0], callbacks[1])
        if registered:
            self._selector.modify(fd, events)
        else:
            self._selector.register(fd, events)

    def _run(self) -> None:
        """Wait for ready sockets, due timers and posted calls, and run them, until stopped (loop thread)."""
        try:
            while True:
                with self._lock:
                    if self._stopping:
                        return
                    posted = bool(self._posted)
                ready = self._selector.select(0 if posted else self.timers.next_delay())
                self.passes += 1
                for key, mask in ready:
                    if key.fileobj is self._wake_reader:
                        self._drain_wake()
                        continue
                    callbacks = self._callbacks.get(key.fd)
                    if callbacks is None:
                        continue  # unregistered by an earlier callback of this pass
                    if mask & selectors.EVENT_READ and callbacks[0] is not None:
                        self._call(callbacks[0])
                    if mask & selectors.EVENT_WRITE and callbacks[1] is not None:
                        self._call(callbacks[1])
                self._run_posted()
                self._run_timers()
        finally:
            self._close()

    def _run_posted(self) -> None:
        with self._lock:
            calls, self._posted = self._posted, deque()
        for call in calls:
            self._call(call)

    def _run_timers(self) -> None:
        while True:
            try:
                self.timers.run_due()
                return
            except Exception:  # that timer counts as run; the others still run
                logger.exception("a deadline callback on the I/O loop failed")

    @staticmethod
    def _call(call: Callback) -> None:
        try:
            call()
        except Exception:
            logger.exception("a callback on the I/O loop failed; the loop goes on")

    def _wake(self) -> None:
        with self._lock:
            if self._woken:
                return
            self._woken = True
        try:
            self._wake_writer.send(b"\0")
        except OSError:  # full (a wake-up is pending anyway) or closed (the loop is gone)
            pass

    def _drain_wake(self) -> None:
        # Drained first, then the flag cleared: a call posted in between finds the flag still set and
        # sends nothing, but is already in _posted, which this pass runs next.
        try:
            while self._wake_reader.recv(4096):
                pass
        except OSError:  # BlockingIOError: drained
            pass
        with self._lock:
            self._woken = False

    def _close(self) -> None:
        self._selector.close()
        self._wake_reader.close()
        self._wake_writer.close()
