"""Where a text, fragmented or compressed message is put together, and the ``bytes`` or ``str`` it becomes.

A message whose whole size is not known from one frame header (a text
message checked as it arrives, a message in several frames, a compressed one
inflated as it arrives) is appended to an :class:`Assembly`. The aim is that
a message costs its own size and a constant, never twice its size:

* While small (up to :data:`STAGE_AT`), it grows in a ``bytearray`` and
  becomes ``bytes`` or ``str`` by a copy: twice a small size is a constant.
* Past that, it moves to an anonymous private memory map that grows with
  ``mremap`` (no copy, and pages cost memory only once written; on Linux,
  where ``mremap`` is: elsewhere it stays in its bytearray). When the
  message is whole, its ``bytes`` or ``str`` is made at its final size,
  uninitialised, through the C API that C code builds such objects with
  (``PyBytes_FromStringAndSize(NULL, n)``, ``PyUnicode_New``), and filled
  from the map a slice at a time, each slice of the map handed back to the
  kernel (``MADV_DONTNEED``) once copied. So the map and the result together
  never hold much more than the message. A ``bytearray`` would not do:
  growing it copies it where ``realloc`` cannot extend it in place (below
  glibc's mmap threshold, which rises to 32 MiB in a process that freed large
  blocks), and turning it into ``bytes`` or ``str`` is a second full copy.

A ``str`` is stored one, two or four bytes per character, as its widest
character needs, so its size and layout are known only once every character
is: the reader counts them as it checks the UTF-8 (:meth:`Assembly.append`
takes the count and the width of each chunk), and :meth:`Assembly.take_text`
decodes the map a slice at a time straight into the ``str``.

Where that C API is not at hand (not CPython, no ``ctypes``, or a layout the
self-test at import does not recognise), the result is copied out of the map
in one go: the map and the result both, for a moment, as before.

No I/O, no threads: the reader thread's only.
"""

from __future__ import annotations

import codecs
import logging
import mmap
import sys
from typing import Callable, Optional, Union

__all__ = ["Assembly", "STAGE_AT", "text_width"]

logger = logging.getLogger(__name__)

#: A message that grows past this many bytes moves from a bytearray to a memory map of its own.
STAGE_AT = 1 << 20
_SLICE = 1 << 20  # copied into the result, and the map's pages let go, this much at a time (a multiple of the page size)
# Maps only where they grow without a copy (mremap: Linux); elsewhere a message stays in its bytearray, as before.
_MAPPING = sys.platform.startswith("linux") and hasattr(mmap, "MAP_PRIVATE")
_MAP_FLAGS = getattr(mmap, "MAP_PRIVATE", 0)  # private: MADV_DONTNEED frees the pages (shared anonymous memory would stay in shmem)
_DONTNEED: Optional[int] = getattr(mmap, "MADV_DONTNEED", None)

Chunk = Union[bytes, bytearray, memoryview]
#: ``fresh(size)``: an uninitialised object of ``size`` bytes and a writable view of them.
FreshBytes = Callable[[int], tuple[bytes, memoryview]]
#: ``fresh(length, width)``: an uninitialised str of ``length`` characters of ``width`` (see text_width) and a writable view of its storage.
FreshText = Callable[[int, int], tuple[str, memoryview]]

#: PyUnicode_New's maxchar for each width: 0 ASCII, 1 Latin-1, 2 and 4 bytes per character.
_MAXCHAR = {0: 127, 1: 255, 2: 65535, 4: 1114111}
_LITTLE = sys.byteorder == "little"
#: The codec whose bytes are a str's storage, by width: one, two or four bytes per character, in the machine's order.
_STORAGE = {0: "latin-1", 1: "latin-1", 2: "utf-16-le" if _LITTLE else "utf-16-be", 4: "utf-32-le" if _LITTLE else "utf-32-be"}


def _compact_header() -> int:
    """Bytes of a compact str's header that is not ASCII: sys.getsizeof counts them and ``(length + 1) * width`` more."""
    sample = "\u0100" * 3  # made here: no UTF-8 copy cached on it
    return sys.getsizeof(sample) - 2 * (len(sample) + 1)


def _c_api() -> tuple[Optional[FreshBytes], Optional[FreshText], int]:
    """The makers of uninitialised ``bytes`` and ``str``, and the size of a str's header; None where unavailable.

    ``fresh_str(length, width)`` makes a ``str`` of ``length`` characters
    stored as ``PyUnicode_New`` does for that width's maxchar. Whoever fills
    it must give it exactly such characters, at least one of them needing
    that width, as CPython requires of every ``str``: :class:`Assembly`
    counts them as they arrive.

    Both are tried once, here, on small objects of every width, and given up
    (with a debug line) if anything about them is not as CPython lays it out.
    """
    if sys.implementation.name != "cpython":
        return None, None, 0
    try:
        import ctypes

        api = ctypes.pythonapi
        new_bytes = api.PyBytes_FromStringAndSize
        new_bytes.argtypes, new_bytes.restype = (ctypes.c_void_p, ctypes.c_ssize_t), ctypes.py_object
        bytes_data = api.PyBytes_AsString
        bytes_data.argtypes, bytes_data.restype = (ctypes.py_object,), ctypes.c_void_p
        new_str = api.PyUnicode_New
        new_str.argtypes, new_str.restype = (ctypes.c_ssize_t, ctypes.c_uint32), ctypes.py_object
        # For an ASCII str, its UTF-8 is its own data: the pointer returned is the str's
        # characters, no copy made (PyUnicode_UTF8 of a compact ASCII object).
        ascii_data = api.PyUnicode_AsUTF8AndSize
        ascii_data.argtypes, ascii_data.restype = (ctypes.py_object, ctypes.c_void_p), ctypes.c_void_p
        header = _compact_header()
    except (ImportError, AttributeError, OSError, TypeError) as exc:
        logger.debug("no C API for messages made in place: %r", exc)
        return None, None, 0

    def view(address: Optional[int], size: int) -> memoryview:
        if not address:
            raise MemoryError(f"cannot make an object of {size} bytes")
        return memoryview((ctypes.c_char * size).from_address(address)).cast("B")

    def fresh_bytes(size: int) -> tuple[bytes, memoryview]:
        made: bytes = new_bytes(None, size)
        return made, view(bytes_data(made), size)

    def fresh_str(length: int, width: int) -> tuple[str, memoryview]:
        made: str = new_str(length, _MAXCHAR[width])
        if not width:
            return made, view(ascii_data(made, None), length)
        # PyUnicode_DATA of a compact str that is not ASCII: its characters follow the header.
        return made, view(id(made) + header, length * width)

    try:
        made, target = fresh_bytes(3)
        with target:
            target[:] = b"abc"
        if made != b"abc" or hash(made) != hash(b"abc"):
            raise ValueError(f"made {made!r}")
        for expected, width in (("abc", 0), ("\xe9t\xe9", 1), ("\u0100b\u20ac", 2), ("a\U0001f600b", 4)):
            text, target = fresh_str(len(expected), width)
            with target:
                target[:] = expected.encode(_STORAGE[width])
            if text != expected or hash(text) != hash(expected) or text.isascii() != (not width) or _width_of(expected, header) != width:
                raise ValueError(f"made {text!r} for {expected!r}")
    except (ValueError, TypeError, KeyError, MemoryError, OSError) as exc:
        logger.debug("messages are not made in place: %r", exc)
        return None, None, 0
    return fresh_bytes, fresh_str, header


def _width_of(piece: str, header: int) -> int:
    """0 for ASCII, else the bytes per character CPython stores ``piece`` in (1, 2 or 4), in constant time.

    A str is stored as its widest character needs, so its size says it;
    for one character (maybe a shared one with a UTF-8 copy cached, which
    sys.getsizeof counts too) its code point does.
    """
    if piece.isascii():
        return 0
    if len(piece) == 1:
        code = ord(piece)
        return 1 if code < 0x100 else 2 if code < 0x10000 else 4
    return (sys.getsizeof(piece) - header) // (len(piece) + 1)


_fresh_bytes, _fresh_str, _HEADER = _c_api()


def text_width(piece: str) -> int:
    """0 if ``piece`` is ASCII, else the bytes per character CPython stores it in (1, 2 or 4): what :meth:`Assembly.append` takes.

    Constant time; 1 for any non-ASCII text where text is not made in place
    (the width is not used then).
    """
    if _fresh_str is None:
        return 0 if piece.isascii() else 1
    return _width_of(piece, _HEADER)


class Assembly:
    """The payload of one message so far: a bytearray while small, then a memory map of its own.

    For one message: append with :meth:`append`, end with :meth:`take_bytes`
    or :meth:`take_text` (or :meth:`clear`, to let go of it unfinished).
    ``size`` is the number of bytes appended; for text, ``chars`` the number
    of characters they make and ``width`` the widest of them (0: all ASCII).
    """

    __slots__ = ("_map", "_small", "chars", "size", "width")

    def __init__(self) -> None:
        self._small = bytearray()
        self._map: Optional[mmap.mmap] = None
        self.size = self.chars = self.width = 0

    @property
    def mapped(self) -> bool:
        """Whether the message moved to a memory map of its own (it grew past :data:`STAGE_AT`)."""
        return self._map is not None

    def append(self, chunk: Chunk, chars: int = 0, width: int = 0) -> None:
        """Add ``chunk``; for text, ``chars`` is how many characters it completes and ``width`` the widest of them (:func:`text_width`)."""
        self.chars += chars
        if width > self.width:
            self.width = width
        end = self.size + len(chunk)
        if end <= STAGE_AT or not _MAPPING:  # still small: no map yet
            self._small += chunk
            self.size = end
            return
        stage = self._map
        if stage is None:
            stage = self._to_map(end)
        elif end > len(stage):
            # mremap: the pages move, nothing is copied; doubling keeps the calls few.
            stage.resize(max(end, 2 * len(stage)))
        stage[self.size : end] = chunk
        self.size = end

    def _to_map(self, need: int) -> mmap.mmap:
        """Move the small message into a map with room for ``need`` bytes."""
        stage = self._map = mmap.mmap(-1, max(need, 2 * STAGE_AT), flags=_MAP_FLAGS)
        stage[: self.size] = self._small
        self._small = bytearray()
        return stage

    def take_bytes(self) -> bytes:
        """The whole message as ``bytes``."""
        stage, size = self._map, self.size
        if stage is None:
            return bytes(self._small)
        try:
            with memoryview(stage) as source:
                if _fresh_bytes is None:
                    return bytes(source[:size])  # without the C API: the map and its copy both, for a moment
                result, target = _fresh_bytes(size)
                with target:
                    self._copy(stage, source, target)
                return result
        finally:
            self.clear()

    def take_text(self) -> str:
        """The whole message as ``str``: its bytes must have been checked as UTF-8, and counted, already."""
        stage, size, width = self._map, self.size, self.width
        if stage is None:
            return self._small.decode("utf-8")
        try:
            with memoryview(stage) as source:
                if _fresh_str is None:
                    return str(source[:size], "utf-8")  # without the C API: the map and the str both, for a moment
                result, target = _fresh_str(self.chars, width)
                with target:
                    if not width:
                        self._copy(stage, source, target)  # ASCII: the str's storage is the UTF-8 itself
                    else:
                        self._decode(stage, source, target, _STORAGE[width])
                return result
        finally:
            self.clear()

    def _copy(self, stage: mmap.mmap, source: memoryview, target: memoryview) -> None:
        """Copy the message into ``target`` a slice at a time, letting go of each slice of the map once copied."""
        size = self.size
        if len(target) != size:  # never, as counted; checked so that no byte of the result is left unwritten
            raise ValueError(f"a message of {size} bytes counted as {len(target)}")
        for start in range(0, size, _SLICE):
            end = min(start + _SLICE, size)
            target[start:end] = source[start:end]
            if _DONTNEED is not None and end - start == _SLICE:
                stage.madvise(_DONTNEED, start, _SLICE)

    def _decode(self, stage: mmap.mmap, source: memoryview, target: memoryview, codec: str) -> None:
        """Decode the message into ``target``, a str's storage in ``codec``, a slice at a time, letting go of the map behind."""
        size = self.size
        pos = written = released = 0
        while pos < size:
            end = min(pos + _SLICE, size)
            piece, used = codecs.utf_8_decode(source[pos:end], "strict", end == size)
            data = piece.encode(codec)
            if written + len(data) > len(target):
                raise ValueError(f"text of {self.chars} characters holds more")  # never, as counted: the str is not overrun
            target[written : written + len(data)] = data
            written, pos = written + len(data), pos + used
            behind = pos - pos % _SLICE  # whole slices only: madvise takes whole pages
            if _DONTNEED is not None and behind > released:
                stage.madvise(_DONTNEED, released, behind - released)
                released = behind
        if written != len(target):
            raise ValueError(f"text counted as {self.chars} characters of width {self.width} decoded to {written} bytes")

    def clear(self) -> None:
        """Let go of the message: the map, if it has one, is unmapped at once (whatever is left of it goes back)."""
        if self._map is not None:
            self._map.close()
        self._map = None
        self._small = bytearray()
        self.size = self.chars = self.width = 0
