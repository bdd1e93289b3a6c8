"""``syncws call``: one request to a peer of a running ``syncws serve`` (through its ``/call`` gateway), or one message to an endpoint.

Runs on the thread that calls :func:`run_call`; exit codes as :mod:`syncws.cli` says.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlunsplit

from ..calls import callformat, gateway
from ..client.client import ClientConnection, connect
from ..client.urls import check_url
from ..exceptions import SyncWSError
from .progress import ProgressBar

__all__ = ["run_call"]

#: Seconds a Ctrl-C'd call waits for the server's answer to its close frame before it drops the
#: connection: Ctrl-C means now, and a server busy elsewhere may not read the close for a while.
INTERRUPTED_CLOSE_TIMEOUT = 0.5


def _client_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {"timeout": args.timeout, "max_message_size": None}
    if args.token:
        options["header"] = [f"Authorization: Bearer {args.token}"]
    if args.cafile:
        options["sslopt"] = {"ca_certs": args.cafile}
    if args.unix_socket:
        options["unix_socket"] = args.unix_socket
    return options


def _parse_fields(fields: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; a value that parses as JSON is taken as JSON, else as a string.

    A value that looks like JSON (it starts with ``{`` or ``[``) but does not
    parse is sent as a string too, with a warning on stderr saying why: it
    is most likely a typo or a shell's quoting, and the peer would
    otherwise see a string where it expects an object or a list.
    """
    result: dict[str, Any] = {}
    for field in fields:
        key, sep, value = field.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {field!r}")
        try:
            result[key] = json.loads(value)
        except ValueError as exc:
            if value.lstrip().startswith(("{", "[")):
                print(f"syncws call: warning: {key}={value} is not valid JSON ({exc}); sent as the string {value!r}", file=sys.stderr, flush=True)
            result[key] = value
    return result


def run_call(args: argparse.Namespace) -> int:
    """``syncws call``: one request through a server's /call gateway, or one message to an endpoint; the exit code."""
    try:
        check_url(args.url)  # http://... or no scheme: exit 2 at once, saying what to give
        if args.message is not None:
            return _call_message(args)
        if not args.cmd:
            print("syncws call: give a CMD for a request, or --message for a plain message", file=sys.stderr)
            return 2
        return _call_request(args)
    except ValueError as exc:
        print(f"syncws call: {exc}", file=sys.stderr)
        return 2
    except (SyncWSError, TimeoutError, OSError) as exc:
        print(f"syncws call: {exc}", file=sys.stderr)
        return 1


def _call_message(args: argparse.Namespace) -> int:
    conn = connect(args.url, **_client_options(args))
    try:
        conn.send(args.message)
        reply = conn.recv(timeout=args.timeout)
    except KeyboardInterrupt:
        conn.close(1001, "interrupted", timeout=INTERRUPTED_CLOSE_TIMEOUT)
        raise
    finally:
        conn.close()
    if reply is None:
        print(f"syncws call: the connection closed without a reply ({_close_status(conn)})", file=sys.stderr)
        return 1
    print(reply if isinstance(reply, str) else f"<{len(reply)} bytes>")
    return 0


def _call_request(args: argparse.Namespace) -> int:
    url = _gateway_url(args.url)
    request = gateway.encode_gateway_request(args.cmd, _parse_fields(args.fields), args.timeout)
    conn = connect(url, **_client_options(args))
    bar = ProgressBar(sys.stderr) if (args.progress or sys.stderr.isatty()) else None
    try:
        conn.send(request)
        reply = _read_reply(conn, args.timeout, bar)
    except KeyboardInterrupt:  # the server's gateway cancels the call on the peer when it sees the close
        conn.close(1001, "interrupted", timeout=INTERRUPTED_CLOSE_TIMEOUT)
        raise
    finally:
        if bar is not None:
            bar.finish()
        conn.close()
    data = reply.pop("data", None)
    if isinstance(data, bytes):
        if args.output:
            Path(args.output).write_bytes(data)
            reply["data"] = f"<{len(data)} bytes written to {args.output}>"
        else:
            reply["data"] = f"<{len(data)} bytes; use --output FILE to keep them>"
    elif data is not None:
        reply["data"] = data
    print(json.dumps(reply, indent=2))
    return 0 if reply.get("status") == 200 else 1


def _gateway_url(url: str) -> str:
    """The URL of the /call gateway of the server at ``url``; raises ValueError if ``url`` names another endpoint."""
    parts = check_url(url)
    path = parts.path.rstrip("/")
    if path.endswith("/call"):
        return url
    if path == "":
        return urlunsplit(parts._replace(path="/call"))
    server = urlunsplit(parts._replace(path="", query="", fragment=""))
    raise ValueError(
        f"{url} names the endpoint {parts.path!r}, but a request CMD goes to the server's /call gateway: "
        f"give the server's URL ({server}) or its /call; to send a message to {parts.path!r}, use --message TEXT"
    )


def _close_status(conn: ClientConnection) -> str:
    """How the server closed ``conn``: its close code and reason."""
    code, reason = conn.close_code, conn.close_reason
    return f"close code {code}{': ' + reason if reason else ''}" if code is not None else "no close code"


def _read_reply(conn: ClientConnection, timeout: float, bar: Optional[ProgressBar]) -> dict[str, Any]:
    """Read the gateway's answer: progress messages, then the reply (and its bytes)."""
    for _ in range(10_000_000):  # bounded: one pass per progress message at most
        message = conn.recv(timeout=timeout + 5)
        if message is None:
            raise SyncWSError(f"the connection closed before the reply ({_close_status(conn)})")
        progress, reply = gateway.parse_gateway_message(message)
        if progress is not None:
            if bar is not None:
                bar.update(*progress)
            continue
        if reply.get("dataType") in callformat.BINARY_TYPES:
            try:
                return gateway.gateway_attach_bytes(reply, conn.recv(timeout=timeout + 5))
            except ValueError as exc:
                raise SyncWSError(str(exc)) from None
        return reply
    raise SyncWSError("too many progress messages")
