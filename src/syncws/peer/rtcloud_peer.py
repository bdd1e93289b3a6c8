"""A RemoteService answering an rt-cloud web server in its format: :class:`RtCloudAnswering`.

``RemoteService(url, wire="rtcloud")`` reads rt-cloud's rpc requests
(``{"cmd": "rpc", "class": C, "attribute": A, "args": [...], "kwargs": {...},
"callId": N}``, bytes arguments in base64) and answers each with the command
registered as ``"C.A"``, in rt-cloud's reply format: JSON text messages in
parts of 10 MiB, ``dataSerialization`` ``"bytes"`` or ``"json"``, never
``"pickle"`` (:mod:`syncws.calls.rtcloud_wire` writes them). Failures are
status 400 with ``"RPC Exception: <cmd>: <text>"``, worded as rt-cloud's
peers word them.

Threads: :meth:`RtCloudAnswering.take` runs on the connection's reading
worker, :meth:`RtCloudAnswering.result` and :meth:`RtCloudAnswering.error`
on the worker answering the call; :meth:`RtCloudAnswering.add_command` on
whichever thread registers. All are safe from any thread.
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
from typing import Any, Callable, Optional, Union

from ..calls.commands import CommandFunction, IncomingCall
from ..calls.rtcloud_wire import decode_request, encode_error, encode_result
from ..client.client import ClientConnection
from ..engine.connection import Connection
from ..exceptions import ConnectionClosed, SendTimeout
from ..lograte import RateLimitedLog

__all__ = ["RtCloudAnswering", "command_name", "object_commands"]

logger = logging.getLogger(__name__)


def command_name(name: str) -> tuple[str, str]:
    """The class and attribute of a command registered in rt-cloud mode (``"Class.attribute"``); ValueError otherwise."""
    cls, dot, attribute = name.rpartition(".")
    if not dot or not cls or not attribute:
        raise ValueError(f"in rt-cloud mode a command is named 'Class.attribute', as rt-cloud's server calls it, not {name!r}")
    return cls, attribute


def object_commands(name: str, obj: object) -> dict[str, CommandFunction]:
    """The commands answering every public method of ``obj`` as ``"name.method"``, each calling ``method(*args, **kwargs)``.

    Public: no leading underscore. Properties are not read (that would run
    their code now); methods added to ``obj`` later are not included.
    """
    commands: dict[str, CommandFunction] = {}
    for attribute in dir(obj):
        if attribute.startswith("_") or isinstance(inspect.getattr_static(obj, attribute, None), property):
            continue
        method = getattr(obj, attribute, None)
        if callable(method):
            commands[f"{name}.{attribute}"] = _calling(method)
    return commands


def _calling(method: Callable[..., Any]) -> CommandFunction:
    """A command that calls ``method`` with the request's ``args`` and ``kwargs`` (missing or null: none)."""

    def command(request: dict[str, Any]) -> Any:
        return method(*(request.get("args") or ()), **(request.get("kwargs") or {}))

    return command


class RtCloudAnswering:
    """How a RemoteService in rt-cloud mode reads requests and writes replies: the Session's ``take`` and ``replier``.

    One per service. It knows which classes have commands, to word an
    unknown one as rt-cloud does.
    """

    def __init__(self, url: str, junk_log: RateLimitedLog) -> None:
        self.url = url
        self._junk_log = junk_log
        # Synchronize access to _classes.
        self._lock = threading.Lock()
        self._classes: set[str] = set()

    def add_command(self, name: str) -> None:
        """Note command ``name`` (``"Class.attribute"``; ValueError otherwise) before it is registered."""
        cls, _ = command_name(name)
        with self._lock:
            self._classes.add(cls)

    # ------------------------------------------------------------------ reading

    def take(self, connection: ClientConnection, message: Union[str, bytes]) -> Optional[IncomingCall]:
        """The request in ``message``, its command name ``"Class.attribute"`` as ``cmd``; None when answered here (reading worker).

        A message that is no rpc call is answered with status 400 as
        rt-cloud's peers answer it ("Malformed remote call struct: ..." for
        one without class or attribute, a syncws cancel included), except a
        message with a ``status``: that is no request but a reply or the
        server's error (its 401 "Websocket authentication failed" before it
        closes), logged and never answered.
        """
        try:
            request = json.loads(message)
        except (ValueError, RecursionError) as exc:
            self._refuse(connection, {}, f"{type(exc).__name__}: {exc}")
            return None
        if not isinstance(request, dict):
            self._refuse(connection, {}, f"a request is a JSON object, not {type(request).__name__}")
            return None
        if "status" in request:
            level = logging.WARNING if request.get("status") == 401 else logging.INFO
            self._junk_log.log(connection, level, "%s: the server sent status %r: %s", self.url, request.get("status"), str(request.get("error"))[:200])
            return None
        cls, attribute = request.get("class"), request.get("attribute")
        if cls is None or attribute is None:
            self._refuse(connection, request, f"Malformed remote call struct: missing one of class {cls}, attribute {attribute}")
            return None
        try:
            decoded = decode_request(request)
        except ValueError as exc:
            self._refuse(connection, request, f"Byte encoded data error: {exc}")
            return None
        call = IncomingCall(decoded, connection)
        call.cmd = f"{cls}.{attribute}"
        return call

    def _refuse(self, connection: ClientConnection, request: dict[str, Any], text: str) -> None:
        """Answer a message that is no call with status 400, and log it at most once per interval (reading worker)."""
        self._junk_log.log(connection, logging.WARNING, "%s: %s; answered with status 400", self.url, text)
        try:
            connection.send(encode_error(request, text))
        except (ConnectionClosed, SendTimeout) as exc:
            logger.debug("400 reply (callId %r) not sent: %s", request.get("callId"), exc)

    # ------------------------------------------------------------------ replying (a calls.commands.Replier)

    def result(self, connection: Connection, call: IncomingCall, result: Any) -> None:
        """Send ``result`` in rt-cloud's parts; TypeError, before anything is sent, for one that would need pickle (answering worker)."""
        for message in encode_result(call.request, result):
            connection.send(message)

    def error(self, connection: Connection, call: IncomingCall, status: int, text: str) -> None:
        """Send status 400 with rt-cloud's wording, whatever syncws's ``status`` (answering worker)."""
        if status == 404:
            text = self._unknown(call)
        connection.send(encode_error(call.request, text))

    def _unknown(self, call: IncomingCall) -> str:
        """rt-cloud's words for a call of a class, or of an attribute, that nothing answers."""
        cls, attribute = call.request.get("class"), call.request.get("attribute")
        with self._lock:
            known = cls in self._classes
        if not known:
            return f"RemoteHandler: class {cls} not registered"
        return f"'{cls}' object has no attribute '{attribute}'"
