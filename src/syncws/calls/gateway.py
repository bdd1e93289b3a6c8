"""The ``/call`` gateway's wire format, with no I/O: what ``syncws call`` and the gateway endpoint exchange.

A simpler variant of :mod:`syncws.callformat` for one-shot clients: a
request with an optional ``"timeout"`` (:func:`encode_gateway_request`,
:func:`parse_gateway_request`), progress messages while a reply in parts
arrives (:func:`gateway_progress`), and bytes as one binary message after
the reply (:func:`gateway_reply_messages`, :func:`parse_gateway_message`,
:func:`gateway_attach_bytes`).
"""

from __future__ import annotations

import json
from typing import Any, Optional, Union

from .. import timeouts
from .callformat import as_binary

__all__ = [
    "DEFAULT_GATEWAY_TIMEOUT",
    "gateway_timeout",
    "encode_gateway_request",
    "parse_gateway_request",
    "gateway_error",
    "gateway_progress",
    "gateway_reply_messages",
    "parse_gateway_message",
    "gateway_attach_bytes",
]

#: Seconds the gateway waits for a reply when the request names no ``timeout``.
DEFAULT_GATEWAY_TIMEOUT = 60.0


def gateway_timeout(value: Any) -> Optional[float]:
    """A gateway request's ``timeout`` as doRequest takes it: seconds, or None to wait forever.

    As :func:`syncws.timeouts.check_timeout` (``null``, infinity and numbers
    beyond any wait mean "forever"), except that anything refused, a
    non-number included, raises ValueError: the gateway answers it with 400.
    """
    try:
        return timeouts.check_timeout(value)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


def encode_gateway_request(cmd: str, fields: dict[str, Any], timeout: Optional[float]) -> str:
    """The JSON text of a gateway request: ``fields`` with ``cmd`` and ``timeout`` (seconds, None: forever)."""
    return json.dumps({**fields, "cmd": cmd, "timeout": timeout})


def parse_gateway_request(message: Union[str, bytes]) -> tuple[dict[str, Any], Optional[float]]:
    """A gateway client's request and its timeout (``"timeout"`` is taken out of the request).

    Raises ValueError (TypeError, RecursionError) for anything that is not a
    JSON object with a string ``cmd`` and a valid timeout.
    """
    request = json.loads(message)
    if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
        raise ValueError("a request is a JSON object with a string 'cmd'")
    return request, gateway_timeout(request.pop("timeout", DEFAULT_GATEWAY_TIMEOUT))


def gateway_error(status: int, error: str, cmd: Optional[str] = None) -> dict[str, Any]:
    """A gateway error reply: ``{"status", "error"}``, with the request's ``cmd`` when there is one."""
    return {"status": status, "error": error} if cmd is None else {"cmd": cmd, "status": status, "error": error}


def gateway_progress(received: int, total: int) -> dict[str, Any]:
    """The progress message the gateway sends while a reply in parts arrives."""
    return {"progress": [received, total]}


def gateway_reply_messages(reply: dict[str, Any]) -> list[Union[dict[str, Any], bytes, memoryview]]:
    """The messages that carry a reply to a gateway client: the reply, or a header and then its bytes."""
    binary = as_binary(reply.get("data"))
    if binary is None:
        return [reply]
    view, fields = binary
    header = {k: v for k, v in reply.items() if k != "data"}
    return [{**header, **fields, "size": len(view)}, view]


def parse_gateway_message(message: Union[str, bytes]) -> tuple[Optional[tuple[int, int]], dict[str, Any]]:
    """A message from the gateway: ``((received, total), message)`` for progress, ``(None, reply)`` for the reply.

    Raises ValueError for a message that is neither.
    """
    if not isinstance(message, str):
        raise ValueError(f"expected the gateway's JSON reply, got {len(message)} bytes")
    parsed = json.loads(message)
    if not isinstance(parsed, dict):
        raise ValueError("the gateway's reply is not a JSON object")
    progress = parsed.get("progress")
    if progress is not None:
        if not isinstance(progress, list) or len(progress) != 2 or not all(isinstance(n, int) for n in progress):
            raise ValueError(f"invalid progress {progress!r}")
        return (progress[0], progress[1]), parsed
    return None, parsed


def gateway_attach_bytes(reply: dict[str, Any], data: Union[str, bytes, None]) -> dict[str, Any]:
    """``reply`` with ``data`` set to the bytes that followed it; ValueError unless they are all of them."""
    if not isinstance(data, bytes) or len(data) != reply.get("size"):
        raise ValueError("the reply's bytes did not arrive whole")
    return {**reply, "data": data}
