"""What a connection sends: :data:`Outgoing`, and :func:`encode_message`, which makes it an opcode and a payload.

No I/O: ``Connection.send``, its broadcasts and the handlers' ``write_message`` all take
these, so a message is encoded the same way whichever path it goes out on.
"""

from __future__ import annotations

import json
from typing import Any, Union

from . import frames

__all__ = ["Outgoing", "encode_message"]

#: What ``send`` takes: str (text), a bytes-like object (binary), or a dict or list (JSON text).
Outgoing = Union[str, bytes, bytearray, memoryview, dict[str, Any], list[Any]]


def encode_message(message: Outgoing, binary: bool = False) -> tuple[int, Union[bytes, bytearray, memoryview]]:
    """The opcode and payload of a message that ``send`` takes; TypeError for anything else.

    str goes as text; bytes, bytearray, memoryview and any other object with
    the buffer protocol (a numpy array, for instance) as binary, sent from
    its memory as it is; a dict or list as JSON text. ``binary=True`` sends
    text and JSON as binary frames of their UTF-8 bytes.
    """
    if isinstance(message, (dict, list)):
        message = json.dumps(message)
    if isinstance(message, str):
        return (frames.OP_BINARY if binary else frames.OP_TEXT), message.encode("utf-8")
    if isinstance(message, (bytes, bytearray)):
        return frames.OP_BINARY, message
    try:
        view = memoryview(message)
    except TypeError:
        raise TypeError(
            f"cannot send a {type(message).__name__}: send takes str (text), bytes-like such as bytes, "
            "bytearray or memoryview (binary), or a dict or list (JSON text)"
        ) from None
    if not view.c_contiguous:
        raise TypeError(f"cannot send a non-contiguous {type(message).__name__}: make a contiguous copy first")
    return frames.OP_BINARY, view.cast("B") if view.format != "B" or view.ndim != 1 else view
