"""Files shipped inside the package: the JavaScript client for browser peers, and the status page."""

from __future__ import annotations

from importlib import resources

__all__ = ["javascript_client", "status_page"]


def javascript_client() -> bytes:
    """The source of ``syncws.js``, the browser side of the request/reply protocol."""
    return resources.files(__name__).joinpath("syncws.js").read_bytes()


def status_page() -> bytes:
    """The HTML of the live status page (``server.add_status_page()``): it loads ``syncws.js`` from ``?file=syncws.js``."""
    return resources.files(__name__).joinpath("status.html").read_bytes()
