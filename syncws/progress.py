"""A one-line text progress bar for long transfers (``syncws call`` and ``syncws demo``)."""

from __future__ import annotations

from typing import TextIO

__all__ = ["ProgressBar"]


class ProgressBar:
    """A one-line progress bar for transfers: ``update(done, total)``, then ``finish()``."""

    def __init__(self, out: TextIO, label: str = "") -> None:
        self.out = out
        self.label = label
        self.shown = False

    def update(self, done: int, total: int) -> None:
        """Redraw the bar (any thread; one bar is updated by one thread at a time)."""
        fraction = done / total if total else 1.0
        filled = int(fraction * 30)
        self.out.write(f"\r{self.label}[{'#' * filled}{'.' * (30 - filled)}] {fraction:6.1%} {done / 2**20:8.1f}/{total / 2**20:.1f} MiB")
        self.out.flush()
        self.shown = True

    def finish(self) -> None:
        """End the bar's line."""
        if self.shown:
            self.out.write("\n")
            self.out.flush()
