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

**Leaders and followers.** "The loop thread" is a role, not always the same
thread. :meth:`IOLoop.start` gives the role to a thread of the loop's own for
good; a :class:`~syncws.reactor.handler_pool.HandlerPool` made with the loop
instead passes it among its workers: one of them runs :meth:`IOLoop.lead`,
and when a pass of the loop finds a handler call that could start at once,
that thread asks, with :meth:`IOLoop.hand_off_after_pass`, to leave the
loop once the pass ends, hands the role to an idle worker and runs the
handler itself. The message then reaches its handler on the thread that
read it, with no thread switch on the way (the switch to the next leader
happens beside it, not before it). Between two leaders no thread is the
loop thread: posted calls wait for the next one, which runs them first.

Threads: :meth:`IOLoop.start`, :meth:`IOLoop.stop`, :meth:`IOLoop.call_soon`
and :meth:`IOLoop.in_loop` are safe from any thread, and :meth:`IOLoop.lead`
runs on the thread that takes the role; :meth:`add_reader`,
:meth:`remove_reader`, :meth:`add_writer`, :meth:`remove_writer`,
:meth:`hand_off_after_pass` and :attr:`timers` belong to the loop thread
(post them with ``call_soon`` from elsewhere).
"""

from __future__ import annotations

import logging
import select
import selectors
import socket
import threading
import time
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
        # Synchronize access to _posted, _woken, _stopping, _closed, _leader and _thread.
        self._lock = threading.Lock()
        self._posted: deque[Callback] = deque()  # calls from other threads, run in order on the loop
        self._woken = False  # a wake-up byte is on its way: one is enough
        self._stopping = False
        self._closed = False  # the selector and the wake-up sockets are closed: nothing leads any more
        # The thread that runs the loop now (the loop thread); None between two leaders.
        self._leader: Optional[threading.Thread] = None
        self._thread: Optional[threading.Thread] = None  # the loop's own thread, from start()
        self._handing_off = False  # the leader leaves after this pass (hand_off_after_pass); leader only
        self._done = threading.Event()  # set once closed

    # ------------------------------------------------------------------ any thread

    def start(self) -> IOLoop:
        """Start a thread that leads the loop until it stops; returns at once. Once.

        Not for a loop whose leaders a HandlerPool provides.
        """
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("this loop was started already")
            self._thread = threading.Thread(target=self._lead_for_good, name=self.name, daemon=True)
            thread = self._thread
        thread.start()
        return self

    def stop(self, timeout: Optional[float] = None) -> bool:
        """End the loop after its current pass and close its selector; True when it closed within ``timeout``.

        Sockets still registered are left open: they are their owners' to close.
        Called on the loop thread, it returns at once and the loop closes when
        the pass ends; called while no thread leads, it closes the loop itself
        (no thread takes the lead once the loop is stopping).
        """
        with self._lock:
            self._stopping = True
            leader = self._leader
        if leader is None:
            self._close()
        elif leader is threading.current_thread():
            return True
        else:
            self._wake()
            if not self._done.wait(timeout):
                return False
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)  # a moment: it has nothing left to do
        return True

    def call_soon(self, call: Callback) -> None:
        """Run ``call`` on the loop thread, after the calls posted before it. Ignored once the loop is stopping."""
        with self._lock:
            if self._stopping:
                return
            self._posted.append(call)
        self._wake()

    def in_loop(self) -> bool:
        """True on the loop thread (the thread that leads the loop now)."""
        return threading.current_thread() is self._leader

    @property
    def leader(self) -> Optional[threading.Thread]:
        """The thread that leads the loop now; None between two leaders and once stopped."""
        return self._leader

    def lead(self, until: Optional[Callable[[], bool]] = None, deadline: Optional[float] = None) -> bool:
        """Run the loop on this thread (the loop thread, until it returns): True when it handed the loop on, False once stopped.

        It returns True after a pass in which :meth:`hand_off_after_pass` was
        called: the loop then has no leader until a thread calls this again,
        which the one that asked must arrange. It returns True as well once
        ``until()`` is true (checked before each pass) or the
        ``time.monotonic()`` moment ``deadline`` has passed: a caller that
        leads while it waits for its reply (see
        :mod:`syncws.reactor.caller_lead`). It returns False at once on a
        loop that is stopping. Raises RuntimeError while another thread leads.
        """
        me = threading.current_thread()
        with self._lock:
            if self._leader is not None:
                raise RuntimeError(f"{self._leader.name} leads this loop already")
            if self._stopping:
                return False  # stop() closed the loop, or closes it now
            self._leader = me
        self._handing_off = False
        try:
            self._run(until, deadline)
        finally:
            with self._lock:
                self._leader = None
                stopping = self._stopping
            if stopping:
                self._close()
        return not stopping

    def hand_off_after_pass(self) -> None:
        """Leave the loop when this pass ends: :meth:`lead` returns True on this thread (loop thread)."""
        self._handing_off = True

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

    def _run(self, until: Optional[Callable[[], bool]] = None, deadline: Optional[float] = None) -> None:
        """Wait for ready sockets, due timers and posted calls, and run them, until stopped, handed on,
        ``until()`` or ``deadline`` (loop thread)."""
        # Read without the lock on each pass (the fewest steps between a reply's arrival and
        # its caller's wake-up): a call posted meanwhile has sent a wake-up byte, so the
        # poll below returns at once for it; a stop is seen on the pass after.
        poll, callbacks_of, read, write = self._poller.poll, self._callbacks, self._poller.READ, self._poller.WRITE
        wake_fd = self._wake_reader.fileno()
        while not self._stopping and not self._handing_off:
            if until is not None and until():
                return
            delay = 0 if self._posted else self.timers.next_delay()
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                delay = left if delay is None else min(delay, left)
            ready = poll(delay)
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

    def _lead_for_good(self) -> None:
        """The loop's own thread, from start(): lead until the loop stops."""
        while self.lead():
            pass  # nobody to hand the loop to: lead again

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
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._poller.close()
        self._wake_reader.close()
        self._wake_writer.close()
        self._done.set()
