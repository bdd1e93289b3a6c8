"""Proxies for the client side: a proxy URL turned into websocket-client's options, and its failures into syncws's.

websocket-client opens the tunnel: HTTP CONNECT itself (with Basic
credentials), SOCKS4 and SOCKS5 through the python-socks package
(``pip install syncws[socks]``). :func:`proxy_options` translates
``connect(url, proxy=...)``; :func:`proxy_failure` turns what went wrong on
the way into HandshakeError (the proxy refused with an HTTP status) or
NotConnected (it could not be reached, or a SOCKS proxy said no).

Threads: none of its own; runs on the thread that connects.
"""

from __future__ import annotations

import importlib.util
import re
from typing import Any, Literal, Optional, Union
from urllib.parse import unquote, urlsplit

from ..exceptions import HandshakeError, NotConnected, SyncWSError

__all__ = ["Proxy", "proxy_options", "proxy_failure", "display_proxy"]

#: What ``connect(proxy=...)`` takes: a proxy URL; None for the environment's
#: (http_proxy, https_proxy and no_proxy, as websocket-client reads them); False for none at all.
Proxy = Union[str, None, Literal[False]]

_DEFAULT_PORTS = {"http": 80, "socks4": 1080, "socks4a": 1080, "socks5": 1080, "socks5h": 1080}
# websocket-client's message for a CONNECT answered with another status than 200.
_CONNECT_STATUS = re.compile(r"failed CONNECT via proxy status: (\d{3})")
# No host name ends in a NUL: given as websocket-client's no_proxy list, this one
# matches no host, and so keeps it from reading the no_proxy environment variable.
_NO_HOST = "\0"


def proxy_options(proxy: Proxy, timeout: Optional[float]) -> dict[str, Any]:
    """websocket-client's ``connect`` options for ``proxy``; ValueError for a URL it cannot use.

    An explicit proxy is used for every host: the no_proxy environment
    variable applies only to a proxy taken from the environment.
    ImportError for a SOCKS proxy without python-socks installed.
    """
    if proxy is None:
        return {}
    if proxy is False:
        # websocket-client reads its no_proxy list only along with a proxy host of
        # its own, and then ignores the environment's proxy too: so a proxy that is
        # never used (every host is "no proxy") says "none, not even the environment's".
        return {"http_proxy_host": "no-proxy.invalid", "http_proxy_port": 1, "proxy_type": "http", "http_no_proxy": ["*"]}
    if not isinstance(proxy, str):
        raise TypeError(f"proxy must be a URL, None (the environment's) or False (none), not {proxy!r}")
    parts = urlsplit(proxy)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"unsupported proxy {display_proxy(proxy)!r}: give http://, socks4://, socks4a://, socks5:// or socks5h://")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        raise ValueError(f"proxy {display_proxy(proxy)!r} has an invalid port") from None
    if not parts.hostname:
        raise ValueError(f"proxy {display_proxy(proxy)!r} names no host")
    if scheme != "http" and importlib.util.find_spec("python_socks") is None:
        raise ImportError(f"a {scheme}:// proxy needs the python-socks package: pip install 'syncws[socks]'")
    options: dict[str, Any] = {
        "http_proxy_host": parts.hostname,
        "http_proxy_port": port,
        "proxy_type": scheme,
        "http_no_proxy": [_NO_HOST],
        "http_proxy_timeout": timeout,
    }
    if parts.username is not None:
        options["http_proxy_auth"] = (unquote(parts.username), unquote(parts.password or ""))
    return options


def display_proxy(proxy: Proxy) -> str:
    """The proxy URL for messages and logs, its password replaced by ``***``."""
    if not isinstance(proxy, str):
        return "the environment's proxy" if proxy is None else "no proxy"
    parts = urlsplit(proxy)
    if parts.password is None:
        return proxy
    netloc = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username}:***@{netloc}").geturl()


def proxy_failure(exc: BaseException, url: str, proxy: Proxy) -> Optional[SyncWSError]:
    """The syncws error for a failure on the way through ``proxy``, or None when ``exc`` did not come from a proxy."""
    where = display_proxy(proxy)
    status = _CONNECT_STATUS.search(str(exc))
    if status is not None and type(exc).__name__ == "WebSocketProxyException":
        code = int(status.group(1))
        return HandshakeError(code, f"the proxy {where} refused to open a tunnel to {url}: HTTP {code}")
    module = type(exc).__module__ or ""
    through_proxy = isinstance(proxy, str) and isinstance(exc, OSError)  # websocket-client's own connection to the proxy
    if through_proxy or type(exc).__name__ == "WebSocketProxyException" or module.startswith("python_socks"):
        return NotConnected(f"cannot connect to {url} through the proxy {where}: {exc}")
    return None
