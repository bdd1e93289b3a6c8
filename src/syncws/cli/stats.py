"""``syncws stats``: a running server's stats, read from its status page (``GET <path>?format=json``), as a table.

:func:`run_stats` fetches the stats once and prints them, or with ``--watch``
every ``--interval`` seconds until Ctrl-C (exit 130, as :mod:`syncws.cli.main`
makes of a KeyboardInterrupt). Everything that makes the text is a pure
function of the stats dict (:func:`format_stats` and the figures' formats),
so it is testable without a server; every line it returns fits
:data:`WIDTH` columns. The dict is what ``server.stats()`` returns
(:mod:`syncws.observe.observing`, :mod:`syncws.observe.requests`).

Runs on the thread that calls :func:`run_stats`, with no thread of its own;
exit codes as :mod:`syncws.cli` says: 1 when the server cannot be reached,
refuses, or answers something that is not the stats, with one line on stderr.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import socket
import ssl
import sys
import time
from typing import Any, Callable, Optional, TextIO
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

from .stats_table import WIDTH, check_stats, format_stats, human_bytes, human_count, human_uptime

__all__ = [
    "run_stats",
    "format_stats",
    "check_stats",
    "status_url",
    "fetch_stats",
    "StatsError",
    "human_bytes",
    "human_count",
    "human_uptime",
    "WIDTH",
]

#: The status path a URL without one means (what ``syncws serve --metrics`` and ``add_status_page()`` serve).
DEFAULT_PATH = "/status"

#: The most bytes of an answer read: the stats of a server with very many endpoints stay far below.
MAX_ANSWER = 16 * 1024 * 1024

#: What the terminal is sent between two prints of --watch: cursor home, clear the screen.
CLEAR = "\x1b[H\x1b[2J"

#: The HTTP schemes of each URL scheme ``syncws stats`` takes.
_SCHEMES = {"ws": "http", "wss": "https", "http": "http", "https": "https"}


class StatsError(Exception):
    """The stats could not be had: the server cannot be reached, refused, or answered something else. Its text is one line."""


# --------------------------------------------------------------------------- where and how to ask


def status_url(url: str) -> str:
    """The ``http(s)://`` URL of the stats of the server at ``url``: its status path (/status when none) with ``?format=json``.

    ``url`` is ``ws://``, ``wss://``, ``http://`` or ``https://`` with a host;
    ``wss://`` and ``https://`` mean TLS. A path other than "/" names the
    status page's path. Any query is kept (``?token=`` for one), with
    ``format=json`` in place of a ``format`` it had. Raises ValueError
    saying what to give otherwise.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # urlsplit checks the port only when asked for it
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a server's URL ({exc}): give ws://host:port, or wss://host:port for TLS") from None
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise ValueError(f"{url!r} is not a server's URL: give ws://host:port or http://host:port (wss:// or https:// for TLS)")
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host: give {parts.scheme}://host:port")
    path = parts.path if parts.path not in ("", "/") else DEFAULT_PATH
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "format"] + [("format", "json")]
    return urlunsplit((scheme, parts.netloc, path, urlencode(query), ""))


def _shown(parts: SplitResult) -> str:
    """A URL as error messages name it: without its query, which may hold a token."""
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def fetch_stats(
    url: str, *, token: Optional[str] = None, cafile: Optional[str] = None, unix_socket: Optional[str] = None, timeout: float = 10.0
) -> dict[str, Any]:
    """GET the stats at ``url`` (a :func:`status_url`) and return them, checked by :func:`check_stats`.

    ``token`` goes as ``Authorization: Bearer <token>`` (what ``serve
    --token``'s check reads), ``cafile`` is the CA to trust for https://,
    ``unix_socket`` a path to connect to instead of the URL's host and port.
    Raises StatsError, one line saying what went wrong, for a server that
    cannot be reached, answers another status than 200, or answers
    something that is not the stats; ValueError for a ``cafile`` that
    cannot be loaded.
    """
    parts = urlsplit(url)
    shown = _shown(parts)
    connection = _connection(parts, cafile, unix_socket, timeout)
    headers = {"Accept": "application/json", "Connection": "close"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        connection.request("GET", f"{parts.path}?{parts.query}", headers=headers)
        response = connection.getresponse()
        body = response.read(MAX_ANSWER + 1)
    except ssl.SSLCertVerificationError as exc:
        raise StatsError(f"cannot reach {shown}: its certificate is not trusted ({exc.verify_message or exc}); give the CA with --cafile") from None
    except ssl.SSLError as exc:
        raise StatsError(f"cannot reach {shown}: the TLS handshake failed ({exc.reason or exc}); if the server is not TLS, use ws:// or http://") from None
    except http.client.RemoteDisconnected:
        hint = "; if it serves TLS, use wss:// or https://" if parts.scheme == "http" else ""
        raise StatsError(f"cannot reach {shown}: the server closed the connection without an answer{hint}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise StatsError(f"cannot reach {shown}{' on ' + unix_socket if unix_socket else ''}: {_reason(exc, timeout)}") from None
    finally:
        connection.close()
    _check_status(response.status, response.reason, body, parts, token)
    if len(body) > MAX_ANSWER:
        raise StatsError(f"{shown} answered more than {MAX_ANSWER} bytes: not the stats of a syncws server")
    try:
        data = json.loads(body)
    except ValueError:
        kind = response.getheader("Content-Type") or "no Content-Type"
        raise StatsError(f"{shown} answered something that is not the stats of a syncws server ({kind}, not JSON)") from None
    try:
        return check_stats(data)
    except ValueError as exc:
        raise StatsError(f"{shown} answered JSON that is not the stats of a syncws server: {exc}") from None


def _connection(parts: SplitResult, cafile: Optional[str], unix_socket: Optional[str], timeout: float) -> http.client.HTTPConnection:
    """An unopened connection to the server of ``parts``: TCP, or ``unix_socket``; TLS for https."""
    host = parts.hostname or "localhost"
    context = None
    if parts.scheme == "https":
        try:
            context = ssl.create_default_context(cafile=cafile)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load --cafile {cafile}: {_reason(exc, timeout)}") from None
    if unix_socket is not None:
        if context is not None:
            return _UnixHTTPSConnection(unix_socket, host, timeout, context)
        return _UnixHTTPConnection(unix_socket, host, timeout)
    if context is not None:
        return http.client.HTTPSConnection(host, parts.port, timeout=timeout, context=context)
    return http.client.HTTPConnection(host, parts.port, timeout=timeout)


def _unix_connect(path: str, timeout: Optional[float]) -> socket.socket:
    """A stream socket connected to the Unix socket at ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket (``serve --unix-socket``); the URL's host is the Host header."""

    def __init__(self, path: str, host: str, timeout: float) -> None:
        super().__init__(host, timeout=timeout)
        self._unix_path = path

    def connect(self) -> None:
        self.sock = _unix_connect(self._unix_path, self.timeout)


class _UnixHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS over a Unix socket: the certificate is checked against the URL's host."""

    def __init__(self, path: str, host: str, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, timeout=timeout, context=context)
        self._unix_path = path
        self._tls = context

    def connect(self) -> None:
        self.sock = self._tls.wrap_socket(_unix_connect(self._unix_path, self.timeout), server_hostname=self.host)


def _reason(exc: BaseException, timeout: float) -> str:
    """An exception as a short phrase: an OSError's strerror without its errno, else its text."""
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, OSError) and exc.strerror:
        return str(exc.strerror)
    return str(exc) or type(exc).__name__


def _check_status(status: int, reason: str, body: bytes, parts: SplitResult, token: Optional[str]) -> None:
    """StatsError saying what an answer other than 200 means."""
    if status == 200:
        return
    shown, answered = _shown(parts), f"{status} {reason}".strip()
    if status in (401, 403):
        hint = "the --token given is not the server's" if token else "give the server's token with --token"
        raise StatsError(f"{shown} refused the request: {answered} ({hint})")
    if status in (404, 405, 426):  # 426: a plain GET of a path with no HTTP route (a websocket endpoint, or nothing)
        raise StatsError(
            f"{shown} is no status page: it answered {answered} (`syncws serve --metrics` serves one at {DEFAULT_PATH}, "
            "a server of yours with server.add_status_page())"
        )
    detail = ""
    try:
        error = json.loads(body).get("error")
        detail = f": {error}" if isinstance(error, str) and error else ""
    except (ValueError, AttributeError):
        pass
    raise StatsError(f"{shown} answered {answered}{detail}")


def add_stats_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``syncws stats`` besides the client options (--token, --cafile, --unix-socket)."""
    parser.add_argument(
        "url",
        help="the server: ws://, wss://, http:// or https://host:port; a path names its status page (default /status)",
    )
    parser.add_argument("--watch", action="store_true", help="print again every second (or --interval) until Ctrl-C, with a rate column")
    parser.add_argument("--interval", type=float, metavar="S", help="with --watch: seconds between prints (default 1)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the server's answer (default 10)")


def run_stats(args: argparse.Namespace, out: Optional[TextIO] = None) -> int:
    """``syncws stats``: print a server's stats once, or with --watch until Ctrl-C; the exit code."""
    out = out if out is not None else sys.stdout
    try:
        url = status_url(args.url)
        interval = _interval(args)
        if not (args.timeout > 0 and math.isfinite(args.timeout)):
            raise ValueError(f"--timeout {args.timeout} is not a number of seconds (more than 0)")
    except ValueError as exc:
        _error(str(exc))
        return 2

    def fetch() -> dict[str, Any]:
        return fetch_stats(url, token=args.token, cafile=args.cafile, unix_socket=args.unix_socket, timeout=args.timeout)

    try:
        if interval is None:
            print("\n".join(format_stats(fetch())), file=out, flush=True)
            return 0
        _watch(fetch, interval, out)
        return 0  # not reached: --watch ends with Ctrl-C
    except ValueError as exc:  # a --cafile that cannot be loaded
        _error(str(exc))
        return 2
    except StatsError as exc:
        _error(str(exc))
        return 1
    except BrokenPipeError:  # `syncws stats --watch | head`: the reader has had enough
        _quiet_stdout()
        return 0


def _interval(args: argparse.Namespace) -> Optional[float]:
    """The seconds between prints with --watch, None without it; ValueError for a bad --interval."""
    if args.interval is not None and not args.watch:
        raise ValueError("--interval goes with --watch")
    if not args.watch:
        return None
    interval = 1.0 if args.interval is None else args.interval
    if not (interval > 0 and math.isfinite(interval)):
        raise ValueError(f"--interval {args.interval} is not a number of seconds (more than 0)")
    return float(interval)


def _watch(fetch: Callable[[], dict[str, Any]], interval: float, out: TextIO) -> None:
    """Print the stats every ``interval`` seconds, with rates from the sample before, until Ctrl-C (KeyboardInterrupt)."""
    clear = _is_terminal(out)
    previous: Optional[dict[str, Any]] = None
    due = time.monotonic()
    while True:  # until Ctrl-C, which raises KeyboardInterrupt out of the fetch or the sleep
        stats = fetch()
        text = "\n".join(format_stats(stats, previous, rates=True))
        out.write((CLEAR + text + "\n") if clear else (text + "\n\n"))
        out.flush()
        previous = stats
        due += interval
        delay = due - time.monotonic()
        if delay < 0:  # the fetch took longer than the interval: the next at once, and on time from there
            due, delay = time.monotonic(), 0.0
        time.sleep(delay)


def _is_terminal(out: TextIO) -> bool:
    try:
        return bool(out.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _quiet_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null, so that Python's flush at exit complains of nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _error(message: str) -> None:
    """One line on stderr: what is wrong."""
    print(f"syncws stats: {message}", file=sys.stderr, flush=True)
