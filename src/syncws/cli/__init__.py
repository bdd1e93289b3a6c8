"""``python -m syncws`` and the ``syncws`` command: ``serve``, ``peer``, ``call``, ``stats``,
``demo``, ``bench``, and the Autobahn|Testsuite client.

Layer 6, an edge: imports any layer below; nothing in the package imports it.
"""

from __future__ import annotations

from .main import SERVE_ENDPOINTS, build_parser, main

__all__ = ["SERVE_ENDPOINTS", "build_parser", "main"]
