"""One thread that waits on many sockets and their deadlines at once: :class:`IOLoop`.

The selector engine's heart: instead of a thread per connection that wakes
at every tick to look at its deadlines, one ``syncws-io`` thread blocks in
``select()`` (epoll on Linux, called directly; elsewhere kqueue or poll through
:mod:`selectors`) on
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
import select
import selectors
import socket
import threading
from collections import deque
from typing import Callable, Optional, Union

from .timers import Timers

__all__ = ["IOLoop"]

logger = logging.getLogger(__name__)

Callback = Callable[[], None]

#: Bytes a reader receives at a time.
READ_SIZE = 1 << 16


class _Poller:
    """The system's readiness call: ``epoll`` itself where there is one, else :mod:`selectors`' best.

    Calling epoll directly saves the selectors module's bookkeeping on every
    wake-up, which the loop pays before each reply it matches. ``poll`` returns
    (fd, mask) pairs; ``READ`` and ``WRITE`` say which bits of a mask mean
    readable and writable (an error or a hang-up counts as both, so that the
    callbacks find out).
    """

    def __init__(self) -> None:
        self._epoll: Optional[select.epoll] = select.epoll() if hasattr(select, "epoll") else None
        self._selector: Optional[selectors.BaseSelector] = None if self._epoll is not None else selectors.DefaultSelector()
        if self._epoll is not None:
            self.READ = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
            self.WRITE = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR
            self._in, self._out = select.EPOLLIN, select.EPOLLOUT
        else:
            self.READ, self.WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
            self._in, self._out = selectors.EVENT_READ, selectors.EVENT_WRITE

    def set(self, fd: int, read: bool, write: bool, registered: bool) -> None:
        """Watch ``fd`` for reading and/or writing (both False: not at all); ``registered``: it is watched now."""
        events = (self._in if read else 0) | (self._out if write else 0)
        target: Union[select.epoll, selectors.BaseSelector] = self._epoll if self._epoll is not None else self._selector  # type: ignore[assignment]
        if not events:
            if registered:
                target.unregister(fd)
        elif registered:
            target.modify(fd, events)
        else:
            target.register(fd, events)

    def poll(self, timeout: Optional[float]) -> list[tuple[int, int]]:
        """(fd, mask) of the ready descriptors, waiting at most ``timeout`` seconds (None: until one is)."""
        if self._epoll is not None:
            return self._epoll.poll(-1 if timeout is None else timeout)
        assert self._selector is not None
        return [(key.fd, mask) for key, mask in self._selector.select(timeout)]

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
        else:
            assert self._selector is not None
            self._selector.close()


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
        self._poller = _Poller()
        # Callbacks per registered socket: (on readable, on writable), either None. Loop thread only.
        self._callbacks: dict[int, tuple[Optional[Callback], Optional[Callback]]] = {}
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._poller.set(self._wake_reader.fileno(), True, False, registered=False)
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
        registered = fd in self._callbacks
        self._poller.set(fd, callbacks[0] is not None, callbacks[1] is not None, registered)
        if callbacks[0] is None and callbacks[1] is None:
            self._callbacks.pop(fd, None)
        else:
            self._callbacks[fd] = (callbacks[0], callbacks[1])

    def _run(self) -> None:
        """Wait for ready sockets, due timers and posted calls, and run them, until stopped (loop thread)."""
        # Read without the lock on each pass (the fewest steps between a reply's arrival and
        # its caller's wake-up): a call posted meanwhile has sent a wake-up byte, so the
        # poll below returns at once for it; a stop is seen on the pass after.
        poll, callbacks_of, read, write = self._poller.poll, self._callbacks, self._poller.READ, self._poller.WRITE
        wake_fd = self._wake_reader.fileno()
        try:
            while not self._stopping:
                ready = poll(0 if self._posted else self.timers.next_delay())
                self.passes += 1
                for fd, mask in ready:
                    if fd == wake_fd:
                        self._drain_wake()
                        continue
                    callbacks = callbacks_of.get(fd)
                    if callbacks is None:
                        continue  # unregistered by an earlier callback of this pass
                    if mask & read and callbacks[0] is not None:
                        self._call(callbacks[0])
                    if mask & write and callbacks[1] is not None:
                        self._call(callbacks[1])
                if self._posted:
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
        self._poller.close()
        self._wake_reader.close()
        self._wake_writer.close()
