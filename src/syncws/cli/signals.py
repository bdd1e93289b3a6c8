"""Ctrl-C and SIGTERM for a command that serves until told to stop: :class:`StopSignals`, and :func:`drain_then_stop`."""

from __future__ import annotations

import logging
import signal
import socket
import threading
from typing import Any, Optional, Protocol

__all__ = ["StopSignals", "Stoppable", "drain_then_stop"]

logger = logging.getLogger(__name__)


class Stoppable(Protocol):
    """What :func:`drain_then_stop` stops: a server or a RemoteService."""

    def stop(self, *, drain: Optional[float] = None) -> None: ...


class StopSignals:
    """SIGINT and SIGTERM, caught from construction until :meth:`restore`; :meth:`wait` blocks until one comes.

    The handlers only note the signal, and each signal writes a byte to a
    socket pair, so no KeyboardInterrupt can break into starting or stopping
    a server at an awkward moment: a signal at any time after construction
    leads :meth:`wait` to return. A signal ignored on entry stays ignored.
    Signals can only be caught on the main thread; elsewhere none is caught
    and only :meth:`wake` ends :meth:`wait`.

    Each :meth:`wait` returns for one signal or one :meth:`wake`: a second
    thread that waits after the first signal was seen returns at the next.
    """

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)
        self.received: Optional[int] = None
        self._previous: dict[int, Any] = {}
        self._previous_wakeup: Optional[int] = None
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(signum) is signal.SIG_IGN:
                    continue  # e.g. SIGINT of a command a script started with '&': it stays ignored
                self._previous[signum] = signal.signal(signum, self._handle)
            # A Python handler runs on the main thread, but only once that thread runs Python
            # code again, and the kernel may deliver the signal to any thread: then a main
            # thread blocked in wait()'s recv is not interrupted and never runs it. The wakeup
            # fd is written at C level by whichever thread gets the signal (the signal's
            # number, one byte), so wait() wakes up in every case.
            self._previous_wakeup = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signum  # the wakeup fd has the byte that ends wait()

    def wake(self) -> None:
        """End a :meth:`wait` now or the next one (any thread, and signal handlers)."""
        try:
            self._writer.send(b"\0")
        except OSError:
            pass  # the buffer is full of wake-ups already, or restore() closed it

    def wait(self) -> Optional[int]:
        """Block until a signal or :meth:`wake`; the first signal caught so far, if any."""
        while True:
            data = self._reader.recv(1)
            if not data or data == b"\0":  # closed, or wake()
                return self.received
            if data[0] in self._previous:  # the wakeup fd's byte: a signal of ours
                if self.received is None:
                    self.received = data[0]  # its Python handler may not have run yet
                return self.received

    def restore(self) -> None:
        """Put the previous handlers back: from now on a second Ctrl-C interrupts as usual. More than once is fine."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        if self._previous_wakeup is not None:
            signal.set_wakeup_fd(self._previous_wakeup)
            self._previous_wakeup = None
        self._reader.close()
        self._writer.close()


def drain_then_stop(target: Stoppable, signals: StopSignals, seconds: float, thread_name: str) -> None:
    """Stop ``target`` gracefully, letting the calls in flight finish for up to ``seconds`` (main thread).

    The signals stay caught meanwhile: a second SIGINT or SIGTERM wakes a
    watcher thread (named ``thread_name``), whose plain stop() cuts the
    drain short. Returns once ``target`` stopped.
    """

    def cut_short() -> None:
        signals.wait()  # the next signal, or the wake-up once the drain is over
        target.stop()  # cuts a drain in progress short; does nothing once stopped

    watcher = threading.Thread(target=cut_short, name=thread_name, daemon=True)
    watcher.start()
    logger.info("draining for up to %s s (a second signal stops at once)", seconds)
    try:
        target.stop(drain=seconds)
    finally:
        signals.wake()
        watcher.join(5)
