"""Files shipped inside the package: the JavaScript client for browser peers."""

from __future__ import annotations

from importlib import resources

__all__ = ["javascript_client"]


def javascript_client() -> bytes:
    """The source of ``syncws.js``, the browser side of the request/reply protocol."""
    return resources.files(__name__).joinpath("syncws.js").read_bytes()
