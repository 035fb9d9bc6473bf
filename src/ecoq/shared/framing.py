"""Frames on the shared daemon's socket: a 4-byte big-endian length, then that many bytes.

A message is one frame whose body is a UTF-8 JSON object, at most `MAX_REQUEST_BYTES` from a
client and `MAX_RESPONSE_BYTES` from the daemon; a length over the limit is refused before any
of the body is read, so no request makes the daemon allocate more than `MAX_REQUEST_BYTES`.

A text too large for one answer (a by-job `report` of 100,000 runs is tens of MB) follows its
answer as a stream (`send_stream`): frames of raw UTF-8 of at most `STREAM_CHUNK_BYTES`, each
encoded as it is sent, ended by an empty frame. The client reads at most `MAX_STREAM_BYTES`.
Stdlib only (plus `ecoq.errors`), so the client stays fast to import.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Mapping
from typing import Any

from ecoq.errors import EcoqError

__all__ = [
    "MAX_REQUEST_BYTES",
    "MAX_RESPONSE_BYTES",
    "MAX_STREAM_BYTES",
    "STREAM_CHUNK_BYTES",
    "ProtocolError",
    "encode",
    "recv",
    "recv_stream",
    "send",
    "send_stream",
]

MAX_REQUEST_BYTES = 4 * 1024 * 1024  # a submitted environment is the largest part
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
STREAM_CHUNK_BYTES = 1024 * 1024  # one frame of a streamed text
MAX_STREAM_BYTES = 1024 * 1024 * 1024  # most a client reads of one streamed text
# UTF-8 takes at most 4 bytes a character (3 for the surrogates of undecodable argv bytes).
_STREAM_CHUNK_CHARS = STREAM_CHUNK_BYTES // 4
_HEADER = struct.Struct(">I")


class ProtocolError(EcoqError):
    """A malformed message on the shared daemon's socket."""


def encode(message: Mapping[str, Any], *, limit: int) -> bytes:
    """The frame for `message`. Raises ProtocolError when its body exceeds `limit` bytes."""
    try:
        body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:  # argv bytes that are not UTF-8 (surrogates): \u-escape them
        body = json.dumps(message, separators=(",", ":")).encode("ascii")
    if len(body) > limit:
        raise ProtocolError(f"message of {len(body)} bytes exceeds the {limit}-byte limit")
    return _HEADER.pack(len(body)) + body


def send(sock: socket.socket, message: Mapping[str, Any], *, limit: int) -> None:
    """Send one frame. Raises ProtocolError (too large) or OSError."""
    sock.sendall(encode(message, limit=limit))


def send_stream(sock: socket.socket, head: Mapping[str, Any], text: str) -> None:
    """Send the answer `head`, then `text` in frames of at most `STREAM_CHUNK_BYTES` (each
    encoded as it is sent), then an empty frame. Raises ProtocolError (head too large) or
    OSError."""
    send(sock, head, limit=MAX_RESPONSE_BYTES)
    for at in range(0, len(text), _STREAM_CHUNK_CHARS):
        chunk = text[at : at + _STREAM_CHUNK_CHARS].encode("utf-8", "surrogatepass")
        sock.sendall(_HEADER.pack(len(chunk)) + chunk)
    sock.sendall(_HEADER.pack(0))


def recv_stream(sock: socket.socket, *, limit: int = MAX_STREAM_BYTES) -> str:
    """Read the text `send_stream` sent after its answer. Raises ProtocolError (a frame over
    `STREAM_CHUNK_BYTES`, more than `limit` bytes in all, closed early) or OSError."""
    chunks, total = [], 0
    while True:
        (size,) = _HEADER.unpack(_read(sock, _HEADER.size, "length header"))
        if size == 0:
            break
        if size > STREAM_CHUNK_BYTES:
            raise ProtocolError(
                f"stream frame of {size} bytes exceeds the {STREAM_CHUNK_BYTES}-byte limit"
            )
        total += size
        if total > limit:
            raise ProtocolError(
                f"the answer exceeds {limit} bytes; ask for less (a shorter --since/--until "
                "span, or a coarser --by)"
            )
        chunks.append(_read(sock, size, "stream frame"))
    try:
        return b"".join(chunks).decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"the streamed text is not UTF-8: {exc}") from None


def _read(sock: socket.socket, size: int, what: str) -> bytes:
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(min(size - got, 1024 * 1024))
        if not chunk:
            raise ProtocolError(f"connection closed after {got} of the {size} bytes of the {what}")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv(sock: socket.socket, *, limit: int) -> dict[str, Any]:
    """Read one frame's JSON object. Raises ProtocolError (malformed, too large, closed early),
    or OSError (including `TimeoutError`)."""
    (size,) = _HEADER.unpack(_read(sock, _HEADER.size, "length header"))
    if size > limit:
        raise ProtocolError(f"message of {size} bytes exceeds the {limit}-byte limit")
    body = _read(sock, size, "message")
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: [[[…
        raise ProtocolError(f"message is not UTF-8 JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"message is a JSON {type(message).__name__}, not an object")
    return message
