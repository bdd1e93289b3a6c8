"""Ctrl-C and SIGTERM for a command that serves until told to stop: :class:`StopSignals`."""

from __future__ import annotations

import signal
import socket
import threading
from typing import Any, Optional

__all__ = ["StopSignals"]


class StopSignals:
    """SIGINT and SIGTERM, caught from construction until :meth:`restore`; :meth:`wait` blocks until one comes.

    The handlers only note the signal and write a byte to a socket pair, so no
    KeyboardInterrupt can break into starting or stopping a server at an
    awkward moment: a signal at any time after construction leads :meth:`wait`
    to return. A signal ignored on entry stays ignored. Signals can only be
    caught on the main thread; elsewhere none is caught and only :meth:`wake`
    ends :meth:`wait`.
    """

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)
        self.received: Optional[int] = None
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(signum) is signal.SIG_IGN:
                    continue  # e.g. SIGINT of a command a script started with '&': it stays ignored
                self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signum
        self.wake()

    def wake(self) -> None:
        """End a :meth:`wait` now or the next one (any thread, and signal handlers)."""
        try:
            self._writer.send(b"\0")
        except OSError:
            pass  # the buffer is full of wake-ups already, or restore() closed it

    def wait(self) -> Optional[int]:
        """Block until a signal or :meth:`wake`; the first signal caught so far, if any."""
        self._reader.recv(1)
        return self.received

    def restore(self) -> None:
        """Put the previous handlers back: from now on a second Ctrl-C interrupts as usual."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        self._reader.close()
        self._writer.close()
