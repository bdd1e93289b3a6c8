"""Where a server listens: an IPv4 or IPv6 address (dual-stack on ``::``), or a Unix domain socket.

:class:`ListenAddress` says which socket family a server needs and how to
bind it; :class:`syncws.WebSocketServer` asks it in ``server_bind`` and
``server_close``. The rest are small helpers for the addresses a server
shows: :func:`url_host` brackets an IPv6 literal for a URL, and
:func:`peer_address` turns whatever ``accept()`` returned (a 2-tuple, an
IPv6 4-tuple, or a Unix socket's name) into the ``(host, port)`` pair that
handlers, logs and websocket-server's client dicts expect.

Threads: everything here runs on the thread that creates or closes the
server; nothing is shared.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import stat
from typing import Any, Optional, Union

__all__ = ["ListenAddress", "url_host", "peer_address", "describe_address", "check_open_file_limit"]

logger = logging.getLogger("syncws.server.server")  # its records are the server's: one logger to configure


class ListenAddress:
    """A server's listening address: ``(host, port)`` over TCP, or the path of a Unix socket.

    ``host`` with a colon is an IPv6 literal (``::1``, ``::``) and gets an
    IPv6 socket; ``::`` also takes IPv4 connections where the system allows
    (IPV6_V6ONLY off). Any other host (a name, an IPv4 address) gets an
    IPv4 socket, as before. With ``unix_socket``, host and port are unused.
    """

    def __init__(self, host: str, port: int, unix_socket: Union[str, os.PathLike[str], None] = None) -> None:
        self.host = host
        self.port = port
        self.unix_socket: Optional[str] = os.fspath(unix_socket) if unix_socket is not None else None
        if self.unix_socket is not None:
            self.family = socket.AF_UNIX
        elif ":" in host:
            self.family = socket.AF_INET6
        else:
            self.family = socket.AF_INET
        self._inode: Optional[tuple[int, int]] = None  # (device, inode) of the socket file we made

    @property
    def bind_address(self) -> Union[str, tuple[str, int]]:
        """What ``socket.bind`` takes for this address."""
        return self.unix_socket if self.unix_socket is not None else (self.host, self.port)

    def before_bind(self, sock: socket.socket) -> None:
        """Prepare ``sock`` and the file system for the bind: dual-stack on ``::``; a stale socket file removed."""
        if self.family == socket.AF_INET6 and ipaddress.ip_address(self.host.split("%")[0]).is_unspecified:
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            except (OSError, AttributeError):  # a system without dual-stack sockets: IPv6 only
                logger.info("IPv6 socket on %s cannot take IPv4 connections on this system", self.host)
        if self.unix_socket is not None:
            _remove_stale_socket(self.unix_socket)

    def after_bind(self) -> None:
        """Remember which socket file is ours, so that :meth:`remove` never deletes another server's."""
        if self.unix_socket is not None:
            info = os.stat(self.unix_socket)
            self._inode = (info.st_dev, info.st_ino)

    def remove(self) -> None:
        """Remove the Unix socket file this server made, if it is still there and still ours. More than once is fine."""
        if self.unix_socket is None or self._inode is None:
            return
        try:
            info = os.stat(self.unix_socket)
            if (info.st_dev, info.st_ino) == self._inode:
                os.unlink(self.unix_socket)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("cannot remove the Unix socket %s: %s", self.unix_socket, exc)
        self._inode = None


def _remove_stale_socket(path: str) -> None:
    """Remove ``path`` when it is a socket nobody listens on; raise when it is anything else.

    A server that crashed leaves its socket file behind, and binding fails on
    an existing file: a stale one is removed, as most servers do. A socket a
    live server still accepts on, or a file that is not a socket at all,
    is never removed: OSError (EADDRINUSE) or FileExistsError says so.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket: not removed", path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # nobody listens: stale
    except OSError:
        raise OSError(errno.EADDRINUSE, "a socket that cannot be checked: not removed", path) from None
    else:
        raise OSError(errno.EADDRINUSE, "another server is listening on this socket", path)
    finally:
        probe.close()
    try:
        os.unlink(path)
        logger.info("removed the stale Unix socket %s", path)
    except FileNotFoundError:
        pass


def check_open_file_limit(max_connections: int) -> bool:
    """Warn, once per call, when this process may open fewer files than ``max_connections``; False then.

    Each connection is a socket, and a socket is an open file: past the
    limit, ``accept()`` fails (EMFILE) and new clients wait in the backlog
    until one leaves. The limit is the process's, so the server only says
    so; the program (or ``ulimit -n`` before it) raises it.
    """
    try:
        import resource
    except ImportError:  # no such limit here (Windows)
        return True
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= max_connections:
        return True
    logger.warning(
        "this process may open %d files (ulimit -n), fewer than max_connections (%d): connections past about %d will not be "
        "accepted. Raise the limit (ulimit -n %d before starting, or resource.setrlimit(resource.RLIMIT_NOFILE, ...) "
        "in the program; the hard limit is %s) or lower max_connections",
        soft, max_connections, max(0, soft - 32), max_connections + 64,
        "unlimited" if hard == resource.RLIM_INFINITY else hard,
    )
    return False


def url_host(host: str) -> str:
    """``host`` as it goes in a URL: an IPv6 literal in brackets."""
    return f"[{host}]" if ":" in host else host


def peer_address(address: Any) -> tuple[str, int]:
    """The ``(host, port)`` of what ``accept()`` returned: IPv4 and IPv6 as they are (without
    IPv6's flow info and scope), a Unix socket's peer as ``(its name or "", 0)``."""
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    if isinstance(address, bytes):
        address = address.decode("utf-8", "replace")
    return (str(address) if address else ""), 0


def describe_address(address: tuple[str, int]) -> str:
    """A peer address for a log line: ``host:port``, ``[::1]:port``, or ``unix`` for a Unix socket's unnamed peer."""
    host, port = address[0], address[1]
    if port == 0 and not host:
        return "unix"
    if port == 0:
        return f"unix:{host}"
    return f"{url_host(host)}:{port}"
