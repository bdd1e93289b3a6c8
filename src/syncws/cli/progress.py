"""A text progress bar for long transfers (``syncws call`` and ``syncws demo``)."""

from __future__ import annotations

from typing import Optional, TextIO

__all__ = ["ProgressBar"]


def _is_terminal(out: TextIO) -> bool:
    try:
        return bool(out.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class ProgressBar:
    """A progress bar for transfers: ``update(done, total)``, then ``finish()``.

    On a terminal it is one line, redrawn in place with ``\\r``. Written to a
    file or a pipe (or with ``interactive=False``) it is a plain line at every
    quarter of the way instead, so that a log never fills with carriage returns.
    """

    #: Without a terminal, a line is written each time another this much of the total is done.
    STEP = 0.25

    def __init__(self, out: TextIO, label: str = "", *, interactive: Optional[bool] = None) -> None:
        self.out = out
        self.label = label
        self.interactive = _is_terminal(out) if interactive is None else interactive
        self.shown = False
        self._next_step = self.STEP  # the fraction at which the next plain line is due

    def update(self, done: int, total: int) -> None:
        """Show progress (any thread; one bar is updated by one thread at a time)."""
        fraction = done / total if total else 1.0
        filled = int(fraction * 30)
        line = f"{self.label}[{'#' * filled}{'.' * (30 - filled)}] {fraction:6.1%} {done / 2**20:8.1f}/{total / 2**20:.1f} MiB"
        if self.interactive:
            self.out.write("\r" + line)
        elif fraction >= self._next_step:
            self.out.write(line + "\n")
            while self._next_step <= fraction:
                self._next_step += self.STEP
        else:
            return
        self.out.flush()
        self.shown = True

    def finish(self) -> None:
        """End the bar's line."""
        if self.shown and self.interactive:
            self.out.write("\n")
            self.out.flush()
