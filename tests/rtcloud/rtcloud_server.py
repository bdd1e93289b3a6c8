"""A small Tornado server that answers as rt-cloud's web server does, to test a peer in rt-cloud mode.

It follows rt-cloud's ``rtCommon/webServer.py``, ``webHttpHandlers.py`` and ``webSocketHandlers.py``
(see shared/reference/RTCLOUD-WIRE.md):

- ``GET /login`` renders a form and sets Tornado's ``_xsrf`` cookie (``xsrf_cookies=True``);
- ``POST /login`` checks ``name``/``password`` (``test``/``test`` in test mode, else bcrypt hashes),
  sets the signed ``login`` cookie for 0.5 day and redirects (302) to ``next`` or ``/``; a wrong
  password renders the form again with status 200 and no cookie; after a failed attempt the same
  name must wait ``login_retry_delay`` seconds;
- ``/`` needs the cookie (``tornado.web.authenticated``) and answers 200;
- ``/wsData`` refuses a missing or bad cookie by sending the JSON 401 error and closing.

``request()`` plays rt-cloud's ``RequestHandler.doRequest`` for a test thread: it sends an rpc
request, gathers every part of the reply and returns the decoded value. Unpickling is allowed
here because this is a stand-in for rt-cloud's own server, which does the same.
It imports nothing from syncws.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import pickle
import queue
import secrets
import threading
import time
import zlib
from typing import Any, Callable, Optional, Union

import tornado.escape
import tornado.httpserver
import tornado.ioloop
import tornado.netutil
import tornado.web
import tornado.websocket

logger = logging.getLogger(__name__)

# webHttpHandlers.maxDaysLoginCookieValid: the login cookie's lifetime.
LOGIN_COOKIE_DAYS = 0.5
# LoginHandler.loginRetryDelay: seconds a name waits after a failed attempt.
LOGIN_RETRY_DELAY = 10.0
# webServer settings["websocket_max_message_size"]: Tornado's inbound message limit.
MAX_MESSAGE_SIZE = 16 * 1024 * 1024
# BaseWebSocketHandler.open: what a connection without a valid login cookie is sent before the close.
AUTH_FAILED = {"cmd": "error", "status": 401, "error": "Websocket authentication failed"}
# close_pending_requests was meant to fail waiting calls with this when their peer goes away.
CLOSED_STATUS = 499
CLOSED_ERROR = "Client closed connection"


class RemoteCallError(Exception):
    """A reply with a status other than 200, carrying its status, error text and the reply."""

    def __init__(self, status: Any, error: Any, reply: dict[str, Any]) -> None:
        """Keep the reply's status and error text."""
        super().__init__(f"{status}: {error}")
        self.status = status
        self.error = error
        self.reply = reply


class WireError(ValueError):
    """A reply that breaks rt-cloud's wire format (bad hash, size, parts or serialization)."""


class NotConnectedError(RuntimeError):
    """No authenticated peer is connected on the channel."""


def hash_password(password: str, rounds: int = 4) -> str:
    """Return a bcrypt hash of ``password`` as rt-cloud's addLogin stores it (few rounds, for tests)."""
    # Imported here so that a server in test mode (test/test) works without bcrypt installed.
    import bcrypt

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds)).decode()


def encode_request(cls: str, attribute: str, args: Union[list[Any], tuple[Any, ...]], kwargs: dict[str, Any], call_id: int) -> dict[str, Any]:
    """Build an rpc request as rt-cloud does, bytes arguments encoded as encodeByteTypeArgs does."""
    # Field order follows rt-cloud: remoteCall's callStruct, then the encoding, then callId.
    msg: dict[str, Any] = {"cmd": "rpc", "class": cls, "attribute": attribute, "args": list(args), "kwargs": dict(kwargs)}
    indices = [i for i, arg in enumerate(msg["args"]) if type(arg) is bytes]
    if indices:
        for i in indices:
            tag = "encodedBytes_" + str(i)
            msg[tag] = base64.b64encode(msg["args"][i]).decode("utf-8")
            msg["args"][i] = tag
        msg["encodedByteArgs"] = indices
    keys = [key for key, value in msg["kwargs"].items() if type(value) is bytes]
    for key in keys:
        msg["kwargs"][key] = base64.b64encode(msg["kwargs"][key]).decode("utf-8")
    if keys:
        msg["encodedByteKwargs"] = keys
    msg["callId"] = call_id
    return msg


def decode_part(reply: dict[str, Any]) -> bytes:
    """Return one part's bytes: base64, then zlib when ``compressed``, checked against ``hash``."""
    if "data" not in reply or reply["data"] is None:
        raise WireError(f"reply part has no data: callId {reply.get('callId')}")
    data = base64.b64decode(reply["data"])
    if reply.get("compressed"):
        data = zlib.decompress(data)
    if "hash" in reply and hashlib.md5(data).hexdigest() != reply["hash"]:
        raise WireError(f"part {reply.get('partId')} hash mismatch: callId {reply.get('callId')}")
    if "dataSize" in reply and len(data) != reply["dataSize"]:
        raise WireError(f"part {reply.get('partId')} size {len(data)} != dataSize {reply['dataSize']}")
    return data


def decode_result(data: bytes, serialization: Optional[str]) -> Any:
    """Decode the joined data by ``dataSerialization`` (bytes, json or pickle; raw bytes if absent)."""
    if serialization in (None, "bytes"):
        return data
    if serialization == "json":
        return json.loads(data)
    if serialization == "pickle":
        # Allowed only because this stands in for rt-cloud's own server, which unpickles replies.
        return pickle.loads(data)
    raise WireError(f"unknown dataSerialization {serialization!r}")


class _Pending:
    """One call waiting for its replies."""

    def __init__(self, conn: DataSocketHandler) -> None:
        """Remember the connection the request went to and queue its replies."""
        self.conn = conn
        self.replies: queue.Queue[dict[str, Any]] = queue.Queue()


class _BaseHandler(tornado.web.RequestHandler):
    """Reads the login cookie as rt-cloud's HttpHandler does."""

    def initialize(self, server: RtCloudServer) -> None:
        """Keep the server whose state the handler uses."""
        self.server = server

    def get_current_user(self) -> Optional[bytes]:
        """Return the user name from a valid login cookie, None without one."""
        return self.get_secure_cookie("login", max_age_days=LOGIN_COOKIE_DAYS)


class MainHandler(_BaseHandler):
    """rt-cloud's ``/``: the main page, behind the login."""

    @tornado.web.authenticated
    def get(self) -> None:
        """Answer 200 to a logged-in user (others are redirected to /login)."""
        self.write("<html><body>rt-cloud stand-in</body></html>")


class LoginHandler(_BaseHandler):
    """rt-cloud's ``/login``: a form, a password check, a signed cookie and a redirect."""

    def get(self) -> None:
        """Render the login form (which sets the _xsrf cookie)."""
        self._form("", self.get_argument("next", "/"))

    def post(self) -> None:
        """Check the name and password; set the cookie and redirect, or render the form with an error."""
        login_name = ""
        try:
            login_name = self.get_argument("name")
            password = self.get_argument("password")
            error = self.server._check_login(login_name, password)
        except Exception as err:
            error = f"Exception: {type(err)} {err}"
        if error is None:
            self.server._note_login(login_name, True)
            self.set_secure_cookie("login", login_name, expires_days=LOGIN_COOKIE_DAYS)
            self.redirect(self.get_query_argument("next", "/"))
            return
        logger.warning("Login Failure: %s", login_name)
        self.server._note_login(login_name, False)
        # rt-cloud renders the form again, with status 200: the peer sees no cookie, not an error.
        self._form(error, self.get_query_argument("next", "/"))

    def _form(self, error: str, next_page: str) -> None:
        """Write the login page; xsrf_form_html() is what sets the _xsrf cookie."""
        action = "/login?next=" + tornado.escape.url_escape(next_page)
        self.write(
            "<html><body><form method='post' action='"
            + tornado.escape.xhtml_escape(action)
            + "'>"
            + self.xsrf_form_html()
            + "<p>"
            + tornado.escape.xhtml_escape(error)
            + "</p>"
            + "<input name='name'><input name='password' type='password'><input type='submit'>"
            + "</form></body></html>"
        )


class DataSocketHandler(tornado.websocket.WebSocketHandler):
    """rt-cloud's ``/wsData`` endpoint: refuses a missing or bad login cookie, routes replies by callId."""

    def initialize(self, server: RtCloudServer) -> None:
        """Keep the server whose state the handler uses."""
        self.server = server
        self.user: Optional[str] = None

    def open(self, *args: str, **kwargs: str) -> None:
        """Check the login cookie; send the 401 error and close, or list the connection."""
        # rt-cloud's websocket open() reads the cookie with Tornado's default age limit (31 days).
        user = self.get_secure_cookie("login")
        if not user:
            logger.warning("websocket %s authentication failed", self.server.channel)
            self.server._note_refused()
            self.write_message(json.dumps(AUTH_FAILED))
            self.close()
            return
        self.user = user.decode()
        self.set_nodelay(True)
        self.server._add_connection(self)

    def on_message(self, message: Union[str, bytes]) -> None:
        """Record the message and hand a reply to the call waiting for it."""
        self.server._on_message(self, message)

    def on_close(self) -> None:
        """Unlist the connection and fail the calls still waiting on it."""
        self.server._remove_connection(self)


class RtCloudServer:
    """rt-cloud's web server, reduced to login, ``/`` and one data websocket, on its own IOLoop thread."""

    def __init__(
        self,
        *,
        users: Optional[dict[str, str]] = None,
        test_mode: bool = True,
        cookie_secret: Optional[str] = None,
        login_retry_delay: float = LOGIN_RETRY_DELAY,
        host: str = "127.0.0.1",
        channel: str = "wsData",
        max_message_size: int = MAX_MESSAGE_SIZE,
    ) -> None:
        """Configure the server: ``users`` maps a name to its bcrypt hash; test mode also accepts test/test."""
        self.users = dict(users or {})
        self.test_mode = test_mode
        self.cookie_secret = cookie_secret if cookie_secret is not None else secrets.token_hex(32)
        self.login_retry_delay = login_retry_delay
        self.host = host
        self.channel = channel
        self.max_message_size = max_message_size
        self.port = 0
        self._cond = threading.Condition()
        self._connections: list[DataSocketHandler] = []
        self._pending: dict[int, _Pending] = {}
        self._call_id = 0
        self._received: list[Union[str, bytes]] = []
        self._sent: list[str] = []
        self._logins: list[tuple[str, bool]] = []
        self._login_attempts: dict[str, dict[str, float]] = {}
        self.refused = 0
        self.opened = 0
        self._thread: Optional[threading.Thread] = None
        self._loop: Optional[tornado.ioloop.IOLoop] = None
        self._stopping: Optional[asyncio.Event] = None
        self._ready = threading.Event()
        self._start_error: Optional[BaseException] = None

    @property
    def base_url(self) -> str:
        """Return ``http://host:port``, the peer's login URL."""
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """Return ``ws://host:port/wsData``, the peer's websocket URL."""
        return f"ws://{self.host}:{self.port}/{self.channel}"

    def start(self, timeout: float = 10.0) -> int:
        """Start the IOLoop thread, listening on a free port; return the port."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        self._thread = threading.Thread(target=self._serve, name=f"rtcloud-server-{self.channel}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"rt-cloud stand-in server did not start within {timeout}s")
        if self._start_error is not None:
            raise RuntimeError("rt-cloud stand-in server failed to start") from self._start_error
        return self.port

    def stop(self, timeout: float = 5.0) -> bool:
        """Close every connection and stop the IOLoop thread; True when it ended in time."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return True
        if loop is not None and stopping is not None:
            try:
                loop.add_callback(stopping.set)
            except RuntimeError:
                # The loop is already closed: the thread is ending on its own.
                pass
        thread.join(timeout)
        self._thread = None
        if thread.is_alive():
            logger.warning("rt-cloud stand-in server thread still running after %ss", timeout)
            return False
        return True

    def __enter__(self) -> RtCloudServer:
        """Start on entering a with block."""
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop on leaving a with block."""
        self.stop()

    def _serve(self) -> None:
        """Run the IOLoop thread."""
        try:
            asyncio.run(self._main())
        except BaseException as err:
            self._start_error = err
            self._ready.set()
            logger.exception("rt-cloud stand-in server failed")

    async def _main(self) -> None:
        """Listen, signal readiness, wait for stop(), then close connections and the listener."""
        self._loop = tornado.ioloop.IOLoop.current()
        self._stopping = asyncio.Event()
        app = tornado.web.Application(
            [
                (r"/", MainHandler, {"server": self}),
                (r"/login", LoginHandler, {"server": self}),
                (r"/" + self.channel, DataSocketHandler, {"server": self}),
            ],
            cookie_secret=self.cookie_secret,
            login_url="/login",
            xsrf_cookies=True,
            websocket_max_message_size=self.max_message_size,
        )
        sockets = tornado.netutil.bind_sockets(0, self.host)
        http = tornado.httpserver.HTTPServer(app)
        http.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            http.stop()
            with self._cond:
                handlers = list(self._connections)
            for handler in handlers:
                handler.close()
            try:
                await asyncio.wait_for(http.close_all_connections(), 2.0)
            except asyncio.TimeoutError:
                logger.warning("rt-cloud stand-in server: connections did not close within 2s")

    # ---- state, touched from the IOLoop thread and from test threads, always under _cond ----

    def _check_login(self, name: str, password: str) -> Optional[str]:
        """Return None when the login is good, else the error text rt-cloud's LoginHandler shows."""
        if self.test_mode and name == password == "test":
            return None
        if name in self.users:
            error = self._check_retry(name)
            if error is not None:
                return error
            import bcrypt  # only needed for users beyond test/test; see hash_password

            if bcrypt.checkpw(password.encode(), self.users[name].encode()):
                with self._cond:
                    # rt-cloud counts every attempt first and forgets the name on success.
                    self._login_attempts.pop(name, None)
                return None
            return "Login Error: Login Incorrect"
        return self._check_retry("invalid_user") or "Login Error: Login Incorrect"

    def _check_retry(self, user: str) -> Optional[str]:
        """Record an attempt; return the wait message when the name tried too recently (rt-cloud's checkRetry)."""
        now = time.time()
        with self._cond:
            attempt = self._login_attempts.get(user)
            if attempt is not None and attempt["next_allowed"] > now:
                return f"Next login retry allowed in {int(attempt['next_allowed'] - now)} sec"
            failed = attempt["failed"] + 1 if attempt is not None else 1
            self._login_attempts[user] = {"failed": failed, "next_allowed": now + self.login_retry_delay}
        return None

    def _note_login(self, name: str, ok: bool) -> None:
        """Record a login outcome."""
        with self._cond:
            self._logins.append((name, ok))
            self._cond.notify_all()

    def _note_refused(self) -> None:
        """Count a websocket refused for its cookie."""
        with self._cond:
            self.refused += 1
            self._cond.notify_all()

    def _add_connection(self, handler: DataSocketHandler) -> None:
        """List an authenticated connection."""
        with self._cond:
            self._connections.append(handler)
            self.opened += 1
            self._cond.notify_all()

    def _remove_connection(self, handler: DataSocketHandler) -> None:
        """Unlist a connection and fail the calls waiting on it."""
        with self._cond:
            if handler in self._connections:
                self._connections.remove(handler)
            # rt-cloud meant to do this (close_pending_requests) but compares the wrong object;
            # failing them here keeps a test of a dying peer from waiting out its timeout.
            for call_id, pending in self._pending.items():
                if pending.conn is handler:
                    pending.replies.put({"cmd": "unknown", "callId": call_id, "status": CLOSED_STATUS, "error": CLOSED_ERROR})
            self._cond.notify_all()

    def _on_message(self, handler: DataSocketHandler, message: Union[str, bytes]) -> None:
        """Record a message and route a reply to its waiting call, as rt-cloud's callback does."""
        with self._cond:
            self._received.append(message)
            self._cond.notify_all()
        try:
            reply = json.loads(message)
        except ValueError as err:
            logger.error("WebSocket %s: on_message error: %s", self.channel, err)
            return
        if not isinstance(reply, dict):
            logger.error("WebSocket %s: on_message error: not a JSON object", self.channel)
            return
        for field in ("cmd", "status", "callId"):
            if field not in reply:
                # rt-cloud raises StateError here, which on_message only logs.
                logger.error("WebSocket %s: dataCallback: %s field missing from response", self.channel, field)
                return
        with self._cond:
            pending = self._pending.get(reply["callId"])
        if pending is None:
            logger.error("webServer: dataCallback callId %s not found, current callId %s", reply["callId"], self._call_id)
            return
        pending.replies.put(reply)

    def _write(self, handler: DataSocketHandler, text: str, call_id: Optional[int]) -> None:
        """Write a message on the IOLoop thread; fail the call if the connection is gone."""
        try:
            handler.write_message(text)
        except tornado.websocket.WebSocketClosedError:
            if call_id is not None:
                with self._cond:
                    pending = self._pending.get(call_id)
                if pending is not None:
                    pending.replies.put({"cmd": "unknown", "callId": call_id, "status": CLOSED_STATUS, "error": CLOSED_ERROR})

    def _latest_connection(self) -> DataSocketHandler:
        """Return the most recently opened connection, as rt-cloud's prepare_request picks it."""
        with self._cond:
            if not self._connections:
                raise NotConnectedError(f"webServer: {self.channel} not connected. Please start the remote service.")
            return self._connections[-1]

    # ---- the test's side ----

    def request(
        self,
        cls: str,
        attribute: str,
        args: Union[list[Any], tuple[Any, ...]] = (),
        kwargs: Optional[dict[str, Any]] = None,
        timeout: float = 10.0,
    ) -> Any:
        """Call ``cls.attribute(*args, **kwargs)`` on the latest peer; return the decoded result.

        Raises RemoteCallError for a status other than 200, WireError for a malformed reply,
        TimeoutError when the whole reply has not arrived within ``timeout`` (as for a zero-byte
        result, which rt-cloud's peer never answers), NotConnectedError without a peer.
        """
        if self._loop is None:
            raise RuntimeError("server not started")
        conn = self._latest_connection()
        with self._cond:
            self._call_id += 1
            call_id = self._call_id
            pending = _Pending(conn)
            self._pending[call_id] = pending
        text = json.dumps(encode_request(cls, attribute, args, kwargs or {}, call_id))
        with self._cond:
            self._sent.append(text)
        deadline = time.monotonic() + timeout
        try:
            self._loop.add_callback(self._write, conn, text, call_id)
            return self._collect(pending, call_id, deadline, f"{cls}.{attribute}", timeout)
        finally:
            with self._cond:
                self._pending.pop(call_id, None)

    def _collect(self, pending: _Pending, call_id: int, deadline: float, what: str, timeout: float) -> Any:
        """Gather every part of one call's reply, check it and decode it."""
        parts: dict[int, bytes] = {}
        last: dict[str, Any] = {}
        num_parts = 1
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"rpc {what} (callId {call_id}) got {len(parts)} of {num_parts} parts within {timeout}s")
            try:
                reply = pending.replies.get(timeout=remaining)
            except queue.Empty:
                continue
            if reply.get("status") != 200:
                raise RemoteCallError(reply.get("status"), reply.get("error"), reply)
            if "data" not in reply:
                # Not something rt-cloud's peer sends: a 200 without data carries no value.
                return None
            num_parts = int(reply.get("numParts", 1))
            part_id = int(reply.get("partId", 1))
            if num_parts > 1 and reply.get("multipart") is not True:
                raise WireError(f"callId {call_id}: numParts {num_parts} without multipart: true")
            if not 1 <= part_id <= num_parts or part_id in parts:
                raise WireError(f"callId {call_id}: unexpected partId {part_id} of {num_parts}")
            parts[part_id] = decode_part(reply)
            last = reply
            if len(parts) == num_parts:
                break
        data = b"".join(parts[i] for i in range(1, num_parts + 1))
        if "fileHash" in last and hashlib.md5(data).hexdigest() != last["fileHash"]:
            raise WireError(f"callId {call_id}: fileHash mismatch")
        if "fileSize" in last and len(data) != last["fileSize"]:
            raise WireError(f"callId {call_id}: size {len(data)} != fileSize {last['fileSize']}")
        return decode_result(data, last.get("dataSerialization"))

    def send_raw(self, message: Union[str, dict[str, Any]]) -> None:
        """Send a message (a dict is sent as JSON) to the latest peer, e.g. a malformed request."""
        if self._loop is None:
            raise RuntimeError("server not started")
        conn = self._latest_connection()
        text = message if isinstance(message, str) else json.dumps(message)
        with self._cond:
            self._sent.append(text)
        self._loop.add_callback(self._write, conn, text, None)

    def make_login_cookie(self, name: str) -> str:
        """Return a login cookie value for ``name`` signed with this server's secret (Tornado v2)."""
        return tornado.web.create_signed_value(self.cookie_secret, "login", name).decode()

    def read_login_cookie(self, value: str, max_age_days: float = LOGIN_COOKIE_DAYS) -> Optional[str]:
        """Return the name in a login cookie signed with this server's secret, None if invalid."""
        name = tornado.web.decode_signed_value(self.cookie_secret, "login", value, max_age_days=max_age_days)
        return None if name is None else name.decode()

    def connection_count(self) -> int:
        """Return how many authenticated connections are open."""
        with self._cond:
            return len(self._connections)

    def wait_until(self, predicate: Callable[[RtCloudServer], bool], timeout: float = 10.0) -> bool:
        """Wait until ``predicate(server)`` holds (checked on every state change); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    def wait_connected(self, count: int = 1, timeout: float = 10.0) -> bool:
        """Wait until at least ``count`` authenticated connections are open; False on timeout."""
        return self.wait_until(lambda s: len(s._connections) >= count, timeout)

    def wait_refused(self, count: int = 1, timeout: float = 10.0) -> bool:
        """Wait until at least ``count`` websockets were refused for their cookie; False on timeout."""
        return self.wait_until(lambda s: s.refused >= count, timeout)

    def logins(self) -> list[tuple[str, bool]]:
        """Return every login attempt as (name, succeeded), in order."""
        with self._cond:
            return list(self._logins)

    def received_messages(self) -> list[Union[str, bytes]]:
        """Return a copy of every websocket message received, in order, as it arrived."""
        with self._cond:
            return list(self._received)

    def received_json(self) -> list[Any]:
        """Return every received message parsed as JSON (one that is not JSON is left as is)."""
        out: list[Any] = []
        for raw in self.received_messages():
            try:
                out.append(json.loads(raw))
            except ValueError:
                out.append(raw)
        return out

    def sent_messages(self) -> list[str]:
        """Return a copy of every message sent to peers, in order."""
        with self._cond:
            return list(self._sent)
