"""tests/compat's own collection rule: websocket-server's test suite, where a checkout keeps a copy of it
(``websocket_server_suite/``), is run by scripts/websocket_server_suite.py against syncws.compat, never
collected here (its ``from websocket_server import ...`` would test the real package)."""

from __future__ import annotations

collect_ignore = ["websocket_server_suite"]
