"""A stand-in for rt-cloud's deployed WsRemoteService peer, speaking its wire format exactly.

rt-cloud's peers (the scanner data service, the subject service, the example service) are
installed at sites that will not change them at once, so syncws is tested against this
stand-in, which behaves as they do on the wire (see shared/reference/RTCLOUD-WIRE.md):

- it logs in with ``requests.Session`` (GET /login for the ``_xsrf`` cookie, POST the form,
  read the ``login`` cookie), logging in again before every connection, as rt-cloud does;
- it opens ``websocket.WebSocketApp(url, cookie="login=...")`` with rt-cloud's ping settings
  and reconnects after a delay whenever the connection ends;
- each request runs in a new daemon thread, is dispatched by ``getattr`` on a registered
  object, and is answered with JSON text messages, in 10 MiB parts, exactly as rt-cloud
  serializes them (bytes / json / pickle, zlib on every part of a result over 1 MiB).

It imports nothing from syncws. Run it in-process (``RtCloudPeer(...).start()``) or as a
subprocess (``python -m tests.rtcloud.rtcloud_peer --url ... --login-url ...``), which prints
one ``READY`` line on stdout once connected.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib
import json
import logging
import pickle
import random
import signal
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any, Callable, Optional, Union

import numpy as np
import requests
import websocket

logger = logging.getLogger(__name__)

# rt-cloud's serialization.dataPartSize: results travel in parts of this many bytes.
DATA_PART_SIZE = 10 * 2**20
# wsRemoteService compresses every part when the whole serialized result is over this.
COMPRESS_OVER = 1024 * 1024
# encodeMessageData also compresses any single part over 20 MiB (unreachable with 10 MiB parts).
FORCE_COMPRESS_PART_OVER = 20 * 2**20
# encodeMessageData refuses a part whose base64 text exceeds 100 MiB.
MAX_ENCODED_PART = 100 * 1024 * 1024
# wsRemoteService.runForever: ws.run_forever(..., ping_interval=5, ping_timeout=1).
PING_INTERVAL = 5.0
PING_TIMEOUT = 1.0
# parseConnectionArgs' default retry interval (-i), used after a failed login and after every exit.
RETRY_INTERVAL = 5.0
# utils.trimDictBytes: the reply drops any str/bytes field of the request longer than this.
TRIM_SIZE = 64
# wsRemoteService.isNativeType: these exact types are sent as bytes or JSON, anything else pickled.
NATIVE_TYPES: tuple[type, ...] = (int, float, str, bytes, list, dict, set, tuple, bytearray, memoryview, range, complex)
# The class name rt-cloud's example service registers (addHandlerClass(ExampleInterface, ...)).
EXAMPLE_CLASS_NAME = "ExampleInterface"


class RequestError(Exception):
    """A malformed request, worded as rt-cloud's errors.RequestError."""


class StateError(Exception):
    """A request for something not registered, worded as rt-cloud's errors.StateError."""


class LoginError(Exception):
    """The login gave no ``login`` cookie (rt-cloud's peer then fails on ``"login=" + None``)."""


def make_bytes(size: int, seed: int) -> bytes:
    """Return ``size`` deterministic pseudo-random bytes for ``seed`` (the same in every process)."""
    # random.Random.randbytes is reproducible for a seed since 3.9, and fast enough for 25 MiB.
    return random.Random(seed).randbytes(size)


class SampleObject:
    """A small class whose instances can only travel pickled."""

    def __init__(self, name: str = "sample", values: Optional[list[int]] = None) -> None:
        """Keep a name and a list of numbers."""
        self.name = name
        self.values = [1, 2, 3] if values is None else values

    def __eq__(self, other: object) -> bool:
        """Compare by content, so a test can check a round trip."""
        return isinstance(other, SampleObject) and (self.name, self.values) == (other.name, other.values)

    def __hash__(self) -> int:
        """Hash by content, consistent with equality."""
        return hash((self.name, tuple(self.values)))

    def __repr__(self) -> str:
        """Show the content."""
        return f"SampleObject({self.name!r}, {self.values!r})"


class ExampleInterface:
    """The methods a test calls on the peer, like rt-cloud's ExampleInterface (echo) and more."""

    def __init__(self) -> None:
        """Prepare the wake-up event and the count of calls now sleeping."""
        self._wake = threading.Event()
        self._cond = threading.Condition()
        self._sleeping = 0

    def echo(self, msg: Any) -> str:
        """Return ``"Echo: " + msg`` as rt-cloud's ExampleInterface.echo does."""
        return f"Echo: {msg}"

    def testMethod(self, *args: Any, **kwargs: Any) -> list[Any]:
        """Return ``[args, kwargs]`` as rt-cloud's ExampleInterface.testMethod does."""
        return [args, kwargs]

    def add(self, a: Any, b: Any, c: Any = 0) -> Any:
        """Return ``a + b + c``."""
        return a + b + c

    def getBytes(self, size: int, seed: int = 0) -> bytes:
        """Return ``size`` deterministic bytes (see make_bytes)."""
        return make_bytes(size, seed)

    def bytesLen(self, data: Any) -> int:
        """Return ``len(data)`` (a base64 str if the bytes came as an undecoded keyword)."""
        return len(data)

    def bytesType(self, data: Any) -> str:
        """Return the type name of ``data``, to show how an argument arrived."""
        return type(data).__name__

    def sleep(self, seconds: float) -> str:
        """Block until woken or ``seconds`` pass, then return ``"slept"``."""
        with self._cond:
            self._sleeping += 1
            self._cond.notify_all()
        try:
            self._wake.wait(float(seconds))
        finally:
            with self._cond:
                self._sleeping -= 1
                self._cond.notify_all()
        return "slept"

    def fail(self, text: str) -> None:
        """Raise an exception whose text is ``text``."""
        raise RuntimeError(text)

    def none(self) -> None:
        """Return None (rt-cloud pickles it)."""
        return None

    def array(self, n: int) -> np.ndarray:
        """Return ``numpy.arange(n, dtype=float32)`` (rt-cloud pickles it)."""
        return np.arange(int(n), dtype=np.float32)

    def obj(self) -> SampleObject:
        """Return a SampleObject (rt-cloud pickles it)."""
        return SampleObject()

    def zero(self) -> bytes:
        """Return ``b""``: rt-cloud's peer then sends nothing at all."""
        return b""

    def wake(self) -> None:
        """Wake every call blocked in sleep() and every later one."""
        self._wake.set()

    def sleeping(self) -> int:
        """Return how many calls are blocked in sleep() now."""
        with self._cond:
            return self._sleeping

    def wait_sleeping(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Wait until at least ``count`` calls are in sleep(); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._sleeping >= count, timeout)


def rtcloud_login(login_url: str, user: str, password: str, timeout: float = 10.0) -> Optional[str]:
    """Log in as rt-cloud's projectUtils.login does; return the ``login`` cookie, None if none was set."""
    url = login_url.rstrip("/")
    if not url.endswith("/login"):
        url += "/login"
    with requests.Session() as session:
        try:
            got = session.get(url, timeout=timeout)
        except requests.RequestException as err:
            raise ConnectionError(f"Connection error: {url}") from err
        if got.status_code != 200:
            raise requests.HTTPError(f"Get URL: {url}, returned {got.status_code}")
        # A missing _xsrf cookie raises KeyError here, as it does in rt-cloud.
        form = {"name": user, "password": password, "_xsrf": session.cookies["_xsrf"]}
        posted = session.post(url, data=form, timeout=timeout)
        if posted.status_code != 200:
            raise requests.HTTPError(f"Post URL: {url}, returned {posted.status_code}")
        # rt-cloud's server answers a wrong password with the form again (200) and no cookie.
        return session.cookies.get("login")


def decode_byte_args(request: dict[str, Any], decode_kwargs: bool = False) -> dict[str, Any]:
    """Replace ``encodedBytes_<i>`` placeholders by their bytes, as rt-cloud's decodeByteTypeArgs does."""
    indices = request.get("encodedByteArgs")
    if indices is not None:
        args = list(request.get("args", ()))
        for i in indices:
            tag = "encodedBytes_" + str(i)
            encoded = request.get(tag)
            if encoded is None or args[i] != tag:
                raise RequestError(f"Byte encoded data error: index {i} tag {tag}")
            args[i] = base64.b64decode(encoded)
            request.pop(tag, None)
        request.pop("encodedByteArgs")
        request["args"] = tuple(args)
    # rt-cloud's decodeByteTypeArgs never decodes encodedByteKwargs: a bytes keyword argument
    # reaches the method as its base64 str, and "encodedByteKwargs" stays (and is echoed back).
    if decode_kwargs:
        keys = request.pop("encodedByteKwargs", None)
        if keys:
            kwargs = dict(request.get("kwargs") or {})
            for key in keys:
                kwargs[key] = base64.b64decode(kwargs[key])
            request["kwargs"] = kwargs
    return request


def trim_long_fields(message: dict[str, Any], limit: int = TRIM_SIZE) -> None:
    """Drop every str/bytes field longer than ``limit``, as rt-cloud's trimDictBytes does."""
    for key in list(message):
        value = message[key]
        if type(value) in (str, bytes, bytearray) and len(value) > limit:
            message.pop(key, None)


def serialize_result(result: Any) -> tuple[bytes, str]:
    """Serialize a call's result by rt-cloud's exact type rules; return (data, dataSerialization)."""
    if type(result) in NATIVE_TYPES:
        if type(result) is bytes:
            return result, "bytes"
        # set, complex, bytearray, memoryview and range fail here, and the call answers 400.
        return json.dumps(result).encode(), "json"
    return pickle.dumps(result), "pickle"


def _encode_part(part: dict[str, Any], chunk: bytes, compress: bool) -> None:
    """Fill in one part's hash, data and size as rt-cloud's encodeMessageData does."""
    part["hash"] = hashlib.md5(chunk).hexdigest()
    size = len(chunk)
    if compress or size > FORCE_COMPRESS_PART_OVER:
        part["compressed"] = True
        chunk = zlib.compress(chunk)
    part["data"] = base64.b64encode(chunk).decode("utf-8")
    part["dataSize"] = size
    if len(part["data"]) > MAX_ENCODED_PART:
        part["data"] = None
        raise ValueError("encodeMessageData: encoded file exceeds max size of 100MB")


def data_parts(header: dict[str, Any], data: bytes, compress: bool) -> Iterator[dict[str, Any]]:
    """Yield the reply messages for ``data`` as rt-cloud's generateDataParts does (none for b"")."""
    size = len(data)
    num_parts = (size + DATA_PART_SIZE - 1) // DATA_PART_SIZE
    # These go on the shared header, so an error reply sent later carries them too, as in rt-cloud.
    header["status"] = 200
    header["fileSize"] = size
    header["fileHash"] = hashlib.md5(data).hexdigest()
    header["numParts"] = num_parts
    if num_parts > 1:
        header["multipart"] = True
    offset = 0
    part_id = 0
    while offset < size:
        part = header.copy()
        part_id += 1
        chunk = data[offset : offset + DATA_PART_SIZE]
        part["partId"] = part_id
        try:
            _encode_part(part, chunk, compress)
        except Exception as err:
            part["status"] = 400
            part["error"] = str(err)
            yield part
            break
        yield part
        offset += len(chunk)


def run_remote_call(objects: dict[str, Any], request: dict[str, Any]) -> Any:
    """Dispatch a request by getattr on a registered object, as rt-cloud's RemoteHandler does."""
    class_name = request.get("class")
    attribute_name = request.get("attribute")
    if None in (class_name, attribute_name):
        raise RequestError(f"Malformed remote call struct: missing one of class {class_name}, attribute {attribute_name}")
    instance = objects.get(class_name)  # type: ignore[arg-type]
    if instance is None:
        raise StateError(f"RemoteHandler: class {class_name} not registered")
    attribute = getattr(instance, attribute_name)  # type: ignore[arg-type]
    if not callable(attribute):
        return attribute
    args = request.get("args", ())
    if args is None:
        args = ()
    kwargs = request.get("kwargs", {})
    if kwargs is None:
        kwargs = {}
    return attribute(*args, **kwargs)


def build_replies(objects: dict[str, Any], message: Union[str, bytes], decode_kwargs: bool = False) -> Iterator[dict[str, Any]]:
    """Yield the reply messages rt-cloud's WsRemoteService.handle_request sends for one message."""
    response: dict[str, Any] = {"status": 400, "error": "unhandled request"}
    cmd: Any = "unknown"
    try:
        request = json.loads(message)
        request = decode_byte_args(request, decode_kwargs)
        response = {k: v for k, v in request.items() if k not in ("data", "args", "kwargs")}
        trim_long_fields(response)
        cmd = request.get("cmd")
        result = run_remote_call(objects, request)
        data, serialization = serialize_result(result)
        response["dataSerialization"] = serialization
        response["status"] = 200
        yield from data_parts(response, data, compress=len(data) > COMPRESS_OVER)
    except Exception as err:
        # rt-cloud also calls sys.exit() here when cmd == "error"; in a request thread that only
        # ends the thread, so nothing on the wire changes.
        response.update({"status": 400, "error": f"RPC Exception: {cmd}: {err}"})
        yield response


class RtCloudPeer:
    """rt-cloud's WsRemoteService as a startable, stoppable object (one per test)."""

    def __init__(
        self,
        url: str,
        login_url: Optional[str] = None,
        user: str = "test",
        password: str = "test",
        *,
        objects: Optional[dict[str, Any]] = None,
        retry_delay: float = RETRY_INTERVAL,
        reconnect_delay: float = RETRY_INTERVAL,
        ping_interval: float = PING_INTERVAL,
        ping_timeout: Optional[float] = PING_TIMEOUT,
        decode_byte_kwargs: bool = False,
        cookie: Optional[str] = None,
        name: str = "rtcloud-peer",
        on_received: Optional[Callable[[Union[str, bytes]], None]] = None,
    ) -> None:
        """Configure the peer; ``login_url=None`` skips the login and sends ``cookie`` (if any) as is."""
        self.url = url
        self.login_url = login_url
        self.user = user
        self.password = password
        self.retry_delay = retry_delay
        self.reconnect_delay = reconnect_delay
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.decode_byte_kwargs = decode_byte_kwargs
        self.fixed_cookie = cookie
        self.name = name
        self._on_received = on_received
        # The example object is always there for tests to reach; it is registered unless objects are given.
        self.example = ExampleInterface()
        if objects is None:
            objects = {EXAMPLE_CLASS_NAME: self.example}
        self._objects: dict[str, Any] = dict(objects)
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self.connected = threading.Event()
        self._app: Optional[websocket.WebSocketApp] = None
        self._core: Optional[websocket.WebSocket] = None
        self._runner: Optional[threading.Thread] = None
        self._workers: set[threading.Thread] = set()
        self._received: list[Union[str, bytes]] = []
        self._sent: list[dict[str, Any]] = []
        self.logins = 0
        self.login_failures = 0
        self.connections = 0
        self.disconnections = 0
        self.last_cookie: Optional[str] = None
        self.last_error: Optional[BaseException] = None

    def register(self, class_name: str, instance: Any) -> None:
        """Register an object whose methods requests may call (rt-cloud's addHandlerClassName)."""
        with self._cond:
            self._objects[class_name] = instance

    def start(self) -> RtCloudPeer:
        """Start the connect/reconnect loop on its own thread; return self."""
        if self._runner is not None:
            raise RuntimeError("peer already started")
        self._stop.clear()
        self._runner = threading.Thread(target=self._run, name=f"{self.name}-runner", daemon=True)
        self._runner.start()
        return self

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the loop, close the connection, wake sleepers; True when every thread ended in time."""
        self._stop.set()
        for instance in list(self._objects.values()):
            if isinstance(instance, ExampleInterface):
                instance.wake()
        deadline = time.monotonic() + timeout
        force_at = time.monotonic() + timeout / 2
        runner = self._runner
        while runner is not None and runner.is_alive() and time.monotonic() < deadline:
            with self._cond:
                app, core = self._app, self._core
            if core is not None and core.connected:
                # Start the closing handshake: the server's close frame then ends run_forever at once.
                # (WebSocketApp.close() closes the fd under the dispatcher's select, which then
                # sleeps out its ping_timeout, and during a connect it orphans the new socket.)
                self._send_close(core)
            elif app is not None and core is None and time.monotonic() >= force_at:
                # Still connecting after half the time: force it (on_open closes what gets through).
                app.close()
            runner.join(min(0.05, max(0.0, deadline - time.monotonic())))
        with self._cond:
            workers = list(self._workers)
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in [runner, *workers] if t is not None and t.is_alive()]
        if alive:
            logger.warning("%s: threads still running after stop: %s", self.name, alive)
        self._runner = None
        return not alive

    def __enter__(self) -> RtCloudPeer:
        """Start on entering a with block."""
        return self.start()

    def __exit__(self, *exc: object) -> None:
        """Stop on leaving a with block."""
        self.stop()

    def wait_connected(self, timeout: float = 10.0) -> bool:
        """Wait until the websocket is open; False on timeout."""
        return self.connected.wait(timeout)

    def wait_until(self, predicate: Callable[[RtCloudPeer], bool], timeout: float = 10.0) -> bool:
        """Wait until ``predicate(peer)`` holds (checked on every state change); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    def wait_for_message(self, predicate: Callable[[Any], bool], timeout: float = 10.0) -> Optional[Any]:
        """Wait for a received JSON message satisfying ``predicate``; return it, None on timeout."""
        found: list[Any] = []

        def check() -> bool:
            for parsed in self._parsed(self._received):
                if predicate(parsed):
                    found.append(parsed)
                    return True
            return False

        with self._cond:
            self._cond.wait_for(check, timeout)
        return found[0] if found else None

    def busy(self) -> int:
        """Return how many request threads are still running."""
        with self._cond:
            return len(self._workers)

    def received_messages(self) -> list[Union[str, bytes]]:
        """Return a copy of every message received, in order, as it arrived."""
        with self._cond:
            return list(self._received)

    def received_json(self) -> list[Any]:
        """Return every received message parsed as JSON (a message that is not JSON is left as is)."""
        with self._cond:
            return self._parsed(self._received)

    def sent_messages(self) -> list[dict[str, Any]]:
        """Return a copy of every reply sent, in order."""
        with self._cond:
            return list(self._sent)

    @staticmethod
    def _parsed(messages: list[Union[str, bytes]]) -> list[Any]:
        """Parse each message as JSON, keeping one that is not JSON unchanged."""
        out: list[Any] = []
        for raw in messages:
            try:
                out.append(json.loads(raw))
            except ValueError:
                out.append(raw)
        return out

    def _count(self, counter: str) -> None:
        """Add one to a counter under the lock and wake every waiter."""
        with self._cond:
            setattr(self, counter, getattr(self, counter) + 1)
            self._cond.notify_all()

    def _remember(self, **values: Any) -> None:
        """Set attributes under the lock and wake every waiter."""
        with self._cond:
            for key, value in values.items():
                setattr(self, key, value)
            self._cond.notify_all()

    def _run(self) -> None:
        """Log in, connect, serve until the connection ends, wait, and again, until stopped."""
        while not self._stop.is_set():
            delay = self.reconnect_delay
            try:
                cookie = self.fixed_cookie
                if self.login_url is not None:
                    # rt-cloud never clears needLogin, so it logs in before every connection.
                    cookie = rtcloud_login(self.login_url, self.user, self.password)
                    if cookie is None:
                        raise LoginError(f"login as {self.user!r} gave no login cookie")
                    self._remember(last_cookie=cookie)
                    self._count("logins")
                app = websocket.WebSocketApp(
                    self.url,
                    cookie=None if cookie is None else "login=" + cookie,
                    on_open=self._on_open,
                    on_message=self._on_message,
                    on_error=self._on_error,
                    on_close=self._on_close,
                )
                with self._cond:
                    self._app = app
                if self._stop.is_set():
                    break
                try:
                    app.run_forever(ping_interval=self.ping_interval, ping_timeout=self.ping_timeout)
                finally:
                    # websocket-client's WebSocket.close() returns early once the server has closed
                    # (connected is already False), leaving the socket open; close it here.
                    with self._cond:
                        core, self._core = self._core, None
                    if core is not None:
                        core.shutdown()
            except Exception as err:
                logger.info("%s: WsRemoteService Exception %s: %s", self.name, type(err).__name__, err)
                self._remember(last_error=err)
                if isinstance(err, (LoginError, ConnectionError, requests.RequestException, KeyError)):
                    self._count("login_failures")
                delay = self.retry_delay
            finally:
                with self._cond:
                    self._app = None
                if self.connected.is_set():
                    self.connected.clear()
                    self._count("disconnections")
            self._stop.wait(delay)

    def _on_open(self, ws: websocket.WebSocketApp) -> None:
        """Mark the peer connected."""
        logger.info("%s: connected to %s", self.name, self.url)
        with self._cond:
            self._core = ws.sock
        if self._stop.is_set() and ws.sock is not None:
            # stop() came while connecting: close at once rather than serve.
            self._send_close(ws.sock)
        self.connected.set()
        self._count("connections")

    def _send_close(self, core: websocket.WebSocket) -> None:
        """Send a close frame (1000) without waiting for the reply, which the runner thread reads."""
        try:
            core.send_close()
        except Exception as err:
            # The connection is already gone: run_forever is ending on its own.
            logger.debug("%s: close frame not sent: %s", self.name, err)

    def _on_close(self, ws: websocket.WebSocketApp, code: Optional[int], reason: Optional[str]) -> None:
        """Mark the peer disconnected."""
        logger.info("%s: connection closed %s %s", self.name, code, reason)
        if self.connected.is_set():
            self.connected.clear()
            self._count("disconnections")

    def _on_error(self, ws: websocket.WebSocketApp, error: BaseException) -> None:
        """Log a connection error (run_forever then returns and the loop reconnects)."""
        # A close we started ourselves (stop) also ends here: not worth a warning.
        log = logger.info if self._stop.is_set() else logger.warning
        log("%s: on_error: %s %s", self.name, type(error), error)
        self._remember(last_error=error)

    def _on_message(self, ws: websocket.WebSocketApp, message: Union[str, bytes]) -> None:
        """Record the message and handle it on a new daemon thread, as rt-cloud does."""
        with self._cond:
            self._received.append(message)
            self._cond.notify_all()
        if self._on_received is not None:
            self._on_received(message)
        worker = threading.Thread(target=self._handle, args=(ws, message), name=f"{self.name}-request", daemon=True)
        with self._cond:
            self._workers.add(worker)
        worker.start()

    def _handle(self, ws: websocket.WebSocketApp, message: Union[str, bytes]) -> None:
        """Compute the replies to one message and send each as a JSON text message."""
        try:
            with self._cond:
                objects = dict(self._objects)
            for reply in build_replies(objects, message, self.decode_byte_kwargs):
                self._send(ws, reply)
        except Exception:
            # rt-cloud's thread dies with a traceback when the send itself fails (connection gone).
            logger.exception("%s: request thread failed", self.name)
        finally:
            with self._cond:
                self._workers.discard(threading.current_thread())
                self._cond.notify_all()

    def _send(self, ws: websocket.WebSocketApp, reply: dict[str, Any]) -> None:
        """Send one reply under the send lock (rt-cloud's commLock) and record it."""
        text = json.dumps(reply)
        with self._send_lock:
            ws.send(text)
        with self._cond:
            self._sent.append(reply)
            self._cond.notify_all()


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Parse the subprocess command line."""
    parser = argparse.ArgumentParser(description="Stand-in for rt-cloud's WsRemoteService (example service).")
    parser.add_argument("--url", required=True, help="websocket URL, e.g. ws://127.0.0.1:8888/wsData")
    parser.add_argument("--login-url", default=None, help="server base URL for /login; omit to connect without logging in")
    parser.add_argument("--user", default="test")
    parser.add_argument("--password", default="test")
    parser.add_argument("--cookie", default=None, help="login cookie to send when --login-url is omitted")
    parser.add_argument("--retry-delay", type=float, default=RETRY_INTERVAL, help="seconds to wait after a failed login or connect")
    parser.add_argument("--reconnect-delay", type=float, default=RETRY_INTERVAL, help="seconds to wait after the connection ends")
    parser.add_argument("--ping-interval", type=float, default=PING_INTERVAL)
    parser.add_argument("--ping-timeout", type=float, default=PING_TIMEOUT)
    parser.add_argument("--decode-byte-kwargs", action="store_true", help="decode encodedByteKwargs (rt-cloud does not)")
    parser.add_argument("--ready-timeout", type=float, default=60.0, help="exit 1 if not connected within this many seconds")
    parser.add_argument("--record", default=None, help="append each received message to this file, one JSON string a line")
    parser.add_argument("--log-level", default="WARNING")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    """Run the peer until SIGTERM/SIGINT; print READY once connected."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    record_lock = threading.Lock()

    def record(message: Union[str, bytes]) -> None:
        """Append one received message to the record file, so a test can read what arrived."""
        text = message if isinstance(message, str) else message.decode("utf-8", "replace")
        with record_lock, open(args.record, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(text) + "\n")

    peer = RtCloudPeer(
        args.url,
        args.login_url,
        args.user,
        args.password,
        retry_delay=args.retry_delay,
        reconnect_delay=args.reconnect_delay,
        ping_interval=args.ping_interval,
        ping_timeout=args.ping_timeout,
        decode_byte_kwargs=args.decode_byte_kwargs,
        cookie=args.cookie,
        on_received=record if args.record else None,
    )
    done = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        """Ask the main thread to stop the peer."""
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    peer.start()
    try:
        if not peer.wait_connected(args.ready_timeout):
            sys.stderr.write(f"rtcloud_peer: not connected within {args.ready_timeout}s: {peer.last_error!r}\n")
            return 1
        sys.stdout.write("READY\n")
        sys.stdout.flush()
        # Wait in short slices so the signal handler runs promptly on every platform.
        while not done.wait(0.5):
            pass
        return 0
    finally:
        peer.stop()


if __name__ == "__main__":
    # Run the copy imported under the package name, so that a pickled SampleObject names
    # tests.rtcloud.rtcloud_peer.SampleObject (loadable by the test) and not __main__.SampleObject.
    sys.exit(importlib.import_module("tests.rtcloud.rtcloud_peer").main())
