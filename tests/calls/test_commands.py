"""Commands, IncomingCall, current_call and send_reply of syncws.commands, answering into a recording stand-in for a Connection; no sockets."""

from __future__ import annotations

import json
import logging
import sys
import threading
import zlib
from typing import Any, Callable, Optional, cast

import pytest

from syncws import callformat
from syncws.calls.commands import Commands, IncomingCall, current_call, send_reply
from syncws.engine.connection import Connection
from syncws.exceptions import ConnectionClosed, SendTimeout

pytestmark = pytest.mark.timeout(30)

#: The bound on every wait for something that should happen at once.
WAIT = 10.0
PART_SIZE = 4


class Recorder:
    """A stand-in for a Connection: records each message sent, in order (a binary part as its (header, chunk) bytes)."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, message: Any) -> None:
        self.sent.append(message)

    def send_parts(self, header: bytes, chunk: memoryview) -> None:
        self.sent.append((bytes(header), bytes(chunk)))

    @property
    def connection(self) -> Connection:
        return cast(Connection, self)

    def replies(self) -> list[dict[str, Any]]:
        """The text messages sent, as the JSON objects the peer would read (a dict is sent as JSON)."""
        return [json.loads(m) if isinstance(m, str) else json.loads(json.dumps(m)) for m in self.sent if isinstance(m, (str, dict))]


class Gone(Recorder):
    """A stand-in for a Connection whose peer has gone: every send raises ``error`` (counted in ``attempts``)."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error
        self.attempts = 0

    def send(self, message: Any) -> None:
        self.attempts += 1
        raise self.error

    def send_parts(self, header: bytes, chunk: memoryview) -> None:
        self.attempts += 1
        raise self.error


def send_result(connection: Connection, cmd: Any, call_id: Any, result: Any) -> None:
    """What a side passes to answer: send_reply with its part size."""
    send_reply(connection, cmd, call_id, result, PART_SIZE)


CONN = object()
OTHER = object()


def make_call(call_id: Any = 1, cmd: Any = "q", conn: object = CONN, **fields: Any) -> IncomingCall:
    request = {"cmd": cmd, "callId": call_id, **fields}
    return IncomingCall(request, conn)


def answered(commands: Commands, call: IncomingCall, fn: Optional[Callable[..., Any]], args: tuple[Any, ...] = ()) -> Recorder:
    """Begin ``call`` and answer it with ``fn(*args)`` into a Recorder, as a side does; the Recorder."""
    recorder = Recorder()
    commands.begin(call)
    commands.answer(call, fn, args, recorder.connection, send_result)
    return recorder


def decode_parts(sent: list[Any]) -> tuple[dict[str, Any], list[tuple[callformat.PartHeader, bytes]]]:
    """A binary reply as sent: its header's JSON object, and each part's decoded header and chunk."""
    header, *parts = sent
    assert isinstance(header, str)
    decoded = []
    for part_header, chunk in parts:
        part = callformat.decode_part_header(part_header)
        assert part is not None
        decoded.append((part, chunk))
    return json.loads(header), decoded


# ---------------------------------------------------------------------- register and lookup


def test_lookup_returns_the_registered_function_and_its_inline_flag() -> None:
    """lookup gives the function registered for a cmd and whether it was registered inline."""
    commands = Commands()

    def slow(request: Any) -> int:
        return 1

    def quick(request: Any) -> int:
        return 2

    commands.register("slow", slow)
    commands.register("quick", quick, inline=True)
    assert commands.lookup("slow") == (slow, False)
    assert commands.lookup("quick") == (quick, True)


def test_lookup_of_an_unknown_command_is_none() -> None:
    """lookup of a cmd never registered gives (None, False)."""
    commands = Commands()
    commands.register("known", print)
    assert commands.lookup("unknown") == (None, False)


def test_register_again_replaces_the_function_and_the_inline_flag() -> None:
    """Registering a cmd again replaces its function, and its inline flag both ways."""
    commands = Commands()
    commands.register("c", print, inline=True)
    commands.register("c", repr)
    assert commands.lookup("c") == (repr, False)
    commands.register("c", str, inline=True)
    assert commands.lookup("c") == (str, True)


@pytest.mark.parametrize(("cmd", "fn"), [(7, print), (None, print), (b"q", print), ("q", None), ("q", "print"), ("q", 5)])
def test_register_refuses_a_cmd_that_is_not_a_str_or_a_function_that_is_not_callable(cmd: Any, fn: Any) -> None:
    """register raises TypeError for a non-str cmd or a non-callable fn, and registers nothing."""
    commands = Commands()
    with pytest.raises(TypeError):
        commands.register(cmd, fn)
    assert not commands


def test_commands_is_false_until_a_command_is_registered() -> None:
    """A Commands table is falsy while empty and truthy once something is registered."""
    commands = Commands()
    assert not commands
    commands.register("q", print)
    assert commands


# ---------------------------------------------------------------------- begin, cancel, end


def test_cancel_marks_the_call_on_that_connection_with_that_call_id() -> None:
    """cancel(conn, callId) returns True and cancels only the call begun with that connection and callId."""
    commands = Commands()
    target, same_conn, same_id = make_call(1), make_call(2), make_call(1, conn=OTHER)
    for call in (target, same_conn, same_id):
        commands.begin(call)
    assert commands.active == 3
    assert commands.cancel(CONN, 1)
    assert target.cancelled and not same_conn.cancelled and not same_id.cancelled


def test_cancel_of_a_call_not_being_answered_returns_false() -> None:
    """cancel returns False for an unknown callId, another connection's callId, and a call that has ended."""
    commands = Commands()
    call = make_call(1)
    commands.begin(call)
    assert not commands.cancel(CONN, 2)
    assert not commands.cancel(OTHER, 1)
    commands.end(call)
    assert not commands.cancel(CONN, 1)
    assert not call.cancelled


def test_cancel_all_for_one_connection_leaves_other_connections_calls() -> None:
    """cancel_all(conn) cancels that connection's calls, returns how many, and leaves the others (and the table) as they were."""
    commands = Commands()
    mine = [make_call(1), make_call(2)]
    theirs = make_call(1, conn=OTHER)
    for call in [*mine, theirs]:
        commands.begin(call)
    assert commands.cancel_all(CONN) == 2
    assert all(call.cancelled for call in mine) and not theirs.cancelled
    assert commands.active == 3


def test_cancel_all_without_a_connection_cancels_every_call() -> None:
    """cancel_all() cancels the calls of every connection and returns how many."""
    commands = Commands()
    calls = [make_call(1), make_call(1, conn=OTHER), make_call(9, conn=OTHER)]
    for call in calls:
        commands.begin(call)
    assert commands.cancel_all() == 3
    assert all(call.cancelled for call in calls)


def test_a_call_id_in_flight_is_refused_and_the_first_call_stays_cancellable() -> None:
    """begin() refuses a second call under the same (conn, callId); ending that one leaves the first findable and cancellable."""
    commands = Commands()
    first, second = make_call(1), make_call(1)
    assert commands.begin(first)
    assert not commands.begin(second)
    commands.end(second)
    assert commands.active == 1
    assert commands.cancel(CONN, 1)
    assert first.cancelled and not second.cancelled
    commands.end(first)
    assert commands.active == 0
    assert commands.begin(second)  # free again once the first ended


def test_cancel_all_with_forget_drops_the_connections_calls() -> None:
    """cancel_all(conn, forget=True) cancels and forgets that connection's calls, and leaves the others."""
    commands = Commands()
    mine, other = make_call(1), IncomingCall({"cmd": "echo", "callId": 1}, object())
    assert commands.begin(mine) and commands.begin(other)
    assert commands.cancel_all(CONN, forget=True) == 1
    assert mine.cancelled and not other.cancelled and commands.active == 1


@pytest.mark.parametrize("call_id", ["1", None, True, 1.0, [1]])
def test_calls_without_an_int_call_id_are_not_tracked(call_id: Any) -> None:
    """begin ignores a call whose callId is not an int (a bool is not): active stays 0, no cancel finds it, end is harmless."""
    commands = Commands()
    call = make_call(call_id)
    commands.begin(call)
    assert commands.active == 0
    assert not commands.cancel(CONN, 1)
    assert commands.cancel_all() == 0
    commands.end(call)
    assert commands.active == 0 and not call.cancelled


# ---------------------------------------------------------------------- IncomingCall


def test_incoming_call_takes_cmd_and_call_id_from_the_request() -> None:
    """An IncomingCall keeps its request, its connection and inline flag, and reads cmd and callId from the request."""
    request = {"cmd": "getSettings", "callId": 12, "run": 3}
    call = IncomingCall(request, CONN, inline=True)
    assert (call.cmd, call.call_id, call.conn, call.inline) == ("getSettings", 12, CONN, True)
    assert call.request is request and not call.cancelled


def test_incoming_call_without_cmd_or_call_id_has_none_for_them() -> None:
    """A request without cmd or callId gives an IncomingCall whose cmd and call_id are None, not inline."""
    call = IncomingCall({}, CONN)
    assert (call.cmd, call.call_id, call.inline) == (None, None, False)


def test_cancel_marks_the_call_cancelled_and_repr_says_so() -> None:
    """cancel() turns cancelled True for good; repr names the callId and cmd, and says cancelled once it is."""
    call = make_call(3, "echo")
    assert repr(call) == "<IncomingCall callId=3 cmd='echo'>"
    call.cancel()
    call.cancel()
    assert call.cancelled and call.wait_cancelled(0)
    assert repr(call) == "<IncomingCall callId=3 cmd='echo' cancelled>"


@pytest.mark.parametrize("timeout", [0, 0.01])
def test_wait_cancelled_returns_false_when_the_timeout_passes(timeout: float) -> None:
    """wait_cancelled(timeout) returns False when no cancel came within the timeout."""
    assert make_call().wait_cancelled(timeout) is False


def test_wait_cancelled_returns_early_when_another_thread_cancels() -> None:
    """A thread in wait_cancelled(60) returns True as soon as another thread cancels the call through Commands.cancel."""
    commands = Commands()
    call = make_call(4)
    commands.begin(call)
    waiting = threading.Event()
    got: list[bool] = []

    def wait() -> None:
        waiting.set()
        got.append(call.wait_cancelled(60))

    thread = threading.Thread(target=wait, name="test-commands-waiter", daemon=True)
    thread.start()
    assert waiting.wait(WAIT)
    assert commands.cancel(CONN, 4)
    thread.join(WAIT)
    assert not thread.is_alive() and got == [True]


# ---------------------------------------------------------------------- current_call


def test_current_call_is_none_outside_a_command() -> None:
    """current_call() is None on a thread that answers no call, the test's and a fresh one."""
    assert current_call() is None
    seen: list[Optional[IncomingCall]] = [make_call()]
    thread = threading.Thread(target=lambda: seen.__setitem__(0, current_call()), name="test-commands-outside", daemon=True)
    thread.start()
    thread.join(WAIT)
    assert seen == [None]


def test_current_call_is_the_call_inside_its_function_and_none_after() -> None:
    """Inside fn, current_call() is the call being answered; after answer returns it is None again."""
    seen: list[Optional[IncomingCall]] = []
    call = make_call()
    answered(Commands(), call, lambda: seen.append(current_call()))
    assert seen == [call]
    assert current_call() is None


def test_current_call_is_restored_after_a_function_that_raises() -> None:
    """A function that raises leaves current_call() None once answer has returned."""
    call = make_call()
    seen: list[Optional[IncomingCall]] = []

    def fail() -> None:
        seen.append(current_call())
        raise ValueError("boom")

    recorder = answered(Commands(), call, fail)
    assert seen == [call] and recorder.replies()[0]["status"] == 500
    assert current_call() is None


def test_current_call_nests_when_a_function_answers_another_call() -> None:
    """A call answered inside another's function is current there; the outer call is current again once it returns."""
    commands = Commands()
    outer, inner = make_call(1, "outer"), make_call(2, "inner")
    seen: list[tuple[str, Optional[IncomingCall]]] = []

    def inner_fn() -> None:
        seen.append(("inner", current_call()))

    def outer_fn() -> None:
        seen.append(("outer before", current_call()))
        answered(commands, inner, inner_fn)
        seen.append(("outer after", current_call()))

    answered(commands, outer, outer_fn)
    assert seen == [("outer before", outer), ("inner", inner), ("outer after", outer)]
    assert current_call() is None


def test_current_call_belongs_to_the_thread_that_answers() -> None:
    """While a function runs, another thread's current_call() is still None."""
    elsewhere: list[Optional[IncomingCall]] = [make_call()]

    def fn() -> None:
        thread = threading.Thread(target=lambda: elsewhere.__setitem__(0, current_call()), name="test-commands-other", daemon=True)
        thread.start()
        thread.join(WAIT)

    answered(Commands(), make_call(), fn)
    assert elsewhere == [None]


# ---------------------------------------------------------------------- answer


def test_answer_runs_the_function_with_its_args_and_sends_a_200_reply() -> None:
    """answer calls fn(*args) and sends its result as a 200 JSON reply with the call's cmd and callId; the call is forgotten."""
    commands = Commands()
    got: list[tuple[Any, ...]] = []

    def add(request: dict[str, Any], conn: object) -> int:
        got.append((request, conn))
        return int(request["a"] + request["b"])

    call = make_call(5, "add", a=2, b=3)
    recorder = answered(commands, call, add, (call.request, CONN))
    assert got == [(call.request, CONN)]
    assert recorder.replies() == [{"cmd": "add", "callId": 5, "status": 200, "data": 5}]
    assert commands.active == 0


def test_answer_sends_404_for_an_unknown_command() -> None:
    """With fn None, answer sends one 404 error reply naming the command, and forgets the call."""
    commands = Commands()
    recorder = answered(commands, make_call(6, "nope"), None)
    [reply] = recorder.replies()
    assert (reply["cmd"], reply["callId"], reply["status"]) == ("nope", 6, 404) and "nope" in reply["error"]
    assert commands.active == 0


def test_answer_sends_500_with_the_exception_type_and_message() -> None:
    """A function that raises ValueError("boom") gets one 500 reply whose error is "ValueError: boom"."""
    commands = Commands()

    def fail() -> None:
        raise ValueError("boom")

    recorder = answered(commands, make_call(7), fail)
    assert recorder.replies() == [{"cmd": "q", "callId": 7, "status": 500, "error": "ValueError: boom"}]
    assert commands.active == 0


def test_a_call_cancelled_before_it_runs_runs_nothing_and_sends_nothing() -> None:
    """A call cancelled before answer takes it: fn is never called, nothing is sent, the call is forgotten."""
    commands = Commands()
    call = make_call(8)
    commands.begin(call)
    assert commands.cancel(CONN, 8)
    ran: list[int] = []
    recorder = Recorder()
    commands.answer(call, lambda: ran.append(1), (), recorder.connection, send_result)
    assert ran == [] and recorder.sent == []
    assert commands.active == 0


def test_a_call_cancelled_while_it_runs_sends_no_reply() -> None:
    """A call cancelled (from another thread) while its function runs: the function finishes, its reply is dropped."""
    commands = Commands()
    call = make_call(9)
    commands.begin(call)
    started, finished = threading.Event(), threading.Event()
    recorder = Recorder()

    def fn() -> str:
        started.set()
        assert call.wait_cancelled(WAIT)
        finished.set()
        return "too late"

    thread = threading.Thread(target=commands.answer, args=(call, fn, (), recorder.connection, send_result), name="test-commands-answer", daemon=True)
    thread.start()
    assert started.wait(WAIT)
    assert commands.cancel(CONN, 9)
    thread.join(WAIT)
    assert not thread.is_alive() and finished.is_set()
    assert recorder.sent == []
    assert commands.active == 0


def test_a_result_json_cannot_encode_gets_500() -> None:
    """A result that is not JSON-serializable (a set) is answered with one 500 reply that says so."""
    commands = Commands()
    [reply] = answered(commands, make_call(10), lambda: {1, 2}).replies()
    assert reply["status"] == 500 and reply["callId"] == 10 and "not JSON-serializable" in reply["error"]
    assert commands.active == 0


def test_an_object_array_result_gets_500_with_the_type_error() -> None:
    """A numpy object array, which cannot travel, is answered with one 500 whose error starts "TypeError:", and no header or parts."""
    np = pytest.importorskip("numpy")
    commands = Commands()
    recorder = answered(commands, make_call(11), lambda: np.array([object(), None], dtype=object))
    assert len(recorder.sent) == 1
    [reply] = recorder.replies()
    assert (reply["callId"], reply["status"]) == (11, 500) and reply["error"].startswith("TypeError: ")
    assert commands.active == 0


def test_a_binary_result_to_a_call_id_that_cannot_label_parts_gets_500() -> None:
    """A bytes result for a callId that is not an int gets one 500 "ValueError: ..." reply and no parts."""
    commands = Commands()
    recorder = answered(commands, make_call("7"), lambda: b"bytes")
    assert len(recorder.sent) == 1
    [reply] = recorder.replies()
    assert (reply["callId"], reply["status"]) == ("7", 500) and reply["error"].startswith("ValueError: ")


def test_answer_sends_a_binary_result_in_parts() -> None:
    """A bytes result goes out as its header then its parts (send_result's part size), the call forgotten."""
    commands = Commands()
    data = b"0123456789"
    recorder = answered(commands, make_call(12), lambda: data)
    header, parts = decode_parts(recorder.sent)
    assert header["status"] == 200 and header["size"] == 10 and header["parts"] == 3
    assert b"".join(chunk for _, chunk in parts) == data
    assert commands.active == 0


def test_a_connection_closed_from_send_result_is_not_answered_with_500() -> None:
    """When send_result raises ConnectionClosed, answer sends nothing more (no 500 for a connection that is gone)."""
    commands = Commands()
    call = make_call(13)
    commands.begin(call)
    recorder = Recorder()

    def closed(connection: Connection, cmd: Any, call_id: Any, result: Any) -> None:
        raise ConnectionClosed(1001, "going away")

    commands.answer(call, lambda: 1, (), recorder.connection, closed)
    assert recorder.sent == []
    assert commands.active == 0


def _raise(exc: Exception) -> Any:
    raise exc


def _cannot_encode(connection: Connection, cmd: Any, call_id: Any, result: Any) -> None:
    raise TypeError("cannot encode this")


@pytest.mark.parametrize(
    ("fn", "sender"),
    [
        (None, send_result),
        (lambda: _raise(ValueError("boom")), send_result),
        (lambda: {"ok": True}, send_result),
        (lambda: b"0123456789", send_result),
        (lambda: 1, _cannot_encode),
    ],
    ids=["404", "500", "json", "bytes", "cannot-encode-then-500"],
)
@pytest.mark.parametrize("error", [ConnectionClosed(1006), SendTimeout("peer stopped reading")], ids=["ConnectionClosed", "SendTimeout"])
def test_a_reply_the_gone_connection_cannot_take_is_logged_at_debug_and_the_call_forgotten(
    fn: Optional[Callable[[], Any]], sender: Callable[..., None], error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    """When sending the reply raises ConnectionClosed or SendTimeout, answer returns quietly, logs it at debug, and forgets the call."""
    caplog.set_level(logging.DEBUG, logger="syncws.calls.commands")
    commands = Commands()
    call = make_call(14)
    commands.begin(call)
    gone = Gone(error)
    commands.answer(call, fn, (), gone.connection, sender)
    assert gone.attempts == 1
    assert commands.active == 0
    records = [r for r in caplog.records if r.name == "syncws.calls.commands" and "not sent" in r.getMessage()]
    assert len(records) == 1 and records[0].levelno == logging.DEBUG


def test_a_function_that_raises_system_exit_is_answered_500() -> None:
    """A command that calls sys.exit() is answered with a 500 like any other failure, and answer does not raise."""
    commands = Commands()
    recorder = Recorder()
    call = make_call(15)
    commands.begin(call)
    try:
        commands.answer(call, lambda: sys.exit(3), (), recorder.connection, send_result)
    except SystemExit:
        pass
    assert [r["status"] for r in recorder.replies()] == [500]
    assert commands.active == 0


# ---------------------------------------------------------------------- send_reply


@pytest.mark.parametrize("result", [{"TR": 2.0, "run": 3}, [1, "a"], "text", 0, False])
def test_send_reply_sends_json_data_as_one_text_message(result: Any) -> None:
    """A JSON-able result goes out as one text message {"cmd", "callId", "status": 200, "data"}."""
    recorder = Recorder()
    send_reply(recorder.connection, "getSettings", 3, result, PART_SIZE)
    assert len(recorder.sent) == 1 and isinstance(recorder.sent[0], str)
    assert json.loads(recorder.sent[0]) == {"cmd": "getSettings", "callId": 3, "status": 200, "data": result}


def test_send_reply_of_none_has_no_data() -> None:
    """A None result is a 200 reply without a data field."""
    recorder = Recorder()
    send_reply(recorder.connection, "q", 3, None, PART_SIZE)
    assert recorder.replies() == [{"cmd": "q", "callId": 3, "status": 200}]


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_send_reply_sends_bytes_as_a_header_and_parts_with_their_crc(kind: Callable[[bytes], Any]) -> None:
    """Bytes go out as a JSON header (size, parts, dataType bytes) and then each slice in order behind a part header
    that carries the callId, its place and the slice's CRC-32."""
    data = b"0123456789"
    recorder = Recorder()
    send_reply(recorder.connection, "getFile", 2**40, kind(data), PART_SIZE)
    header, parts = decode_parts(recorder.sent)
    assert header == {"cmd": "getFile", "callId": 2**40, "status": 200, "size": 10, "parts": 3, "dataType": "bytes"}
    offset = 0
    for index, (part, chunk) in enumerate(parts):
        assert (part.call_id, part.part, part.parts, part.offset) == (2**40, index, 3, offset)
        assert part.crc32 == zlib.crc32(chunk) and 0 < len(chunk) <= PART_SIZE
        offset += len(chunk)
    assert b"".join(chunk for _, chunk in parts) == data


def test_send_reply_of_empty_bytes_sends_only_the_header() -> None:
    """Empty bytes go out as a header announcing size 0 and no parts, and nothing else."""
    recorder = Recorder()
    send_reply(recorder.connection, "getFile", 1, b"", PART_SIZE)
    header, parts = decode_parts(recorder.sent)
    assert (header["size"], header["parts"], header["dataType"]) == (0, 0, "bytes") and parts == []


def test_send_reply_sends_an_array_with_its_dtype_and_shape() -> None:
    """A numpy array goes out as an ndarray header with dtype and shape, and parts carrying its C-order bytes."""
    np = pytest.importorskip("numpy")
    array = np.arange(6, dtype="<i2").reshape(2, 3)
    recorder = Recorder()
    send_reply(recorder.connection, "scan", 4, array, PART_SIZE)
    header, parts = decode_parts(recorder.sent)
    assert (header["dataType"], header["dtype"], header["shape"], header["size"]) == ("ndarray", "<i2", [2, 3], 12)
    assert b"".join(chunk for _, chunk in parts) == array.tobytes()


@pytest.mark.parametrize("call_id", ["7", None, True, 7.0, -1, 2**64])
def test_send_reply_refuses_bytes_for_a_call_id_that_cannot_label_parts(call_id: Any) -> None:
    """A binary result for a callId that is not an unsigned 64-bit int raises ValueError before anything is sent."""
    recorder = Recorder()
    with pytest.raises(ValueError, match="callId"):
        send_reply(recorder.connection, "getFile", call_id, b"data", PART_SIZE)
    assert recorder.sent == []


def test_send_reply_takes_the_largest_call_id_parts_can_carry() -> None:
    """A binary result for callId 2**64 - 1 is sent, its parts labelled with it."""
    recorder = Recorder()
    send_reply(recorder.connection, "getFile", 2**64 - 1, b"ab", PART_SIZE)
    _, parts = decode_parts(recorder.sent)
    assert [part.call_id for part, _ in parts] == [2**64 - 1]


def test_send_reply_refuses_an_object_array_before_sending() -> None:
    """An object array raises TypeError and nothing is sent."""
    np = pytest.importorskip("numpy")
    recorder = Recorder()
    with pytest.raises(TypeError):
        send_reply(recorder.connection, "q", 1, np.array([object()], dtype=object), PART_SIZE)
    assert recorder.sent == []
