"""Junk a hostile writer can put on a cluster's channel and into its presence records: shared by the cluster tests."""

from __future__ import annotations

import json
import random
import struct


def envelope(kind: int, header: bytes, payload: bytes = b"") -> bytes:
    """An envelope with the header bytes as given: what a hostile publisher can put on the channel."""
    return struct.pack("!4sBI", b"SWC1", kind, len(header)) + header + payload


#: Every kind of junk a publisher can put on the cluster's channel, by what is wrong with it.
CHANNEL_JUNK: dict[str, bytes] = {
    "empty": b"",
    "short": b"SWC1",
    "no magic": b"junk that is no envelope",
    "random bytes": random.Random(1).randbytes(200),
    "header nested 100 000 deep": envelope(1, b"[" * 100_000),
    "header nested 3000 deep, balanced": envelope(1, b'{"name": ' + b"[" * 3000 + b"]" * 3000 + b"}"),
    "close code 70000": envelope(3, b'{"code": 70000, "reason": "x"}'),
    "close code 1005": envelope(3, b'{"code": 1005, "reason": ""}'),
    "close-all without a code": envelope(3, b'{"reason": ""}'),
    "close-all with a name (a send whose kind byte flipped)": envelope(3, b'{"name": "news", "code": 1000, "reason": ""}'),
    "close code -1": envelope(3, b'{"code": -1, "reason": ""}'),
    "close code true": envelope(3, b'{"code": true, "reason": ""}'),
    "close code as text": envelope(3, b'{"code": "1001", "reason": ""}'),
    "close code 1e308": envelope(3, b'{"code": 1e308, "reason": ""}'),
    "close code 10**4000": envelope(3, b'{"reason": "", "code": 1' + b"0" * 4000 + b"}"),
    "close reason of 200 bytes": envelope(3, b'{"code": 1000, "reason": "' + b"x" * 200 + b'"}'),
    "close reason not a string": envelope(3, b'{"code": 1000, "reason": 5}'),
    "close reason a lone surrogate": envelope(3, b'{"code": 1000, "reason": "\\ud800"}'),
    "text that is not UTF-8": envelope(1, b'{"name": "news"}', b"\xff\xfe"),
    "header not UTF-8": envelope(1, b'\xff{"name": "news"}'),
    "header not JSON": envelope(1, b"{name}"),
    "header a list": envelope(1, b"[]"),
    "header without a name": envelope(2, b"{}"),
    "name a number": envelope(1, b'{"name": 5}'),
    "name empty": envelope(1, b'{"name": ""}'),
    "name of 10 000 characters": envelope(1, b'{"name": "' + b"n" * 10_000 + b'"}'),
    "name a lone surrogate": envelope(1, b'{"name": "\\udc00"}'),
    "header over 4 KiB": envelope(1, b'{"name": "news", "pad": "' + b" " * 5000 + b'"}'),
    "unknown kind": envelope(9, b'{"name": "news"}'),
    "header length past the end": struct.pack("!4sBI", b"SWC1", 1, 2**32 - 1) + b"{}",
    "payload over max_send_size": envelope(2, b'{"name": "news"}', bytes(64 * 1024 + 1)),
}

#: Presence records a member never writes: (connection id, record text) as Redis may hold them.
RECORD_JUNK: dict[str, tuple[bytes, bytes]] = {
    "id not UTF-8": (b"\xff\xfe", json.dumps({"name": "wsData", "address": ["h", 1], "opened": 1.0}).encode()),
    "id of 1000 characters": (b"i" * 1000, json.dumps({"name": "wsData", "address": ["h", 1], "opened": 1.0}).encode()),
    "id with a newline": (b"a\nb", json.dumps({"name": "wsData", "address": ["h", 1], "opened": 1.0}).encode()),
    "nested 100 000 deep": (b"deep", b"[" * 100_000),
    "nested 3000 deep, balanced": (b"deep2", b'{"name": ' + b"[" * 3000 + b"]" * 3000 + b"}"),
    "over 4 KiB": (b"huge", json.dumps({"name": "wsData", "address": ["h", 1], "opened": 1.0, "pad": "x" * 5000}).encode()),
    "not UTF-8": (b"bytes", b"\xff" * 10),
    "not JSON": (b"text", b"{name: wsData}"),
    "a string": (b"string", b'"just a string"'),
    "no address": (b"noaddr", b'{"name": "wsData", "opened": 1.0}'),
    "port 70000": (b"port", b'{"name": "wsData", "address": ["h", 70000], "opened": 1.0}'),
    "port true": (b"portbool", b'{"name": "wsData", "address": ["h", true], "opened": 1.0}'),
    "host a list": (b"host", b'{"name": "wsData", "address": [["h"], 1], "opened": 1.0}'),
    "opened NaN": (b"nan", b'{"name": "wsData", "address": ["h", 1], "opened": NaN}'),
    "opened 1e300": (b"future", b'{"name": "wsData", "address": ["h", 1], "opened": 1e300}'),
    "opened a string": (b"when", b'{"name": "wsData", "address": ["h", 1], "opened": "now"}'),
    "name a number": (b"name", b'{"name": 7, "address": ["h", 1], "opened": 1.0}'),
}
