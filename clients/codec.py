"""Frame payloads to messages and requests to frame payloads (PROTOCOL.md section 1).

Server frames hold UTF-8 JSON: one message object, or an array of message objects (a
batch, in order). ``decode_frame`` always returns the list of objects, so callers never
see the difference. Requests are one JSON object per frame.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from clients.errors import BadMessage
from clients.messages import Message


def decode_frame(payload: bytes | bytearray | memoryview | str) -> list[Message]:
    """Decode one server frame into its messages, batch arrays flattened in order.

    Raises ``BadMessage`` if the payload is not JSON, or not an object or an array of
    objects.
    """
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise BadMessage(f"frame is not JSON: {exc}") from None
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list) and all(isinstance(item, dict) for item in value):
        return value
    raise BadMessage(f"frame is neither an object nor an array of objects: {value!r:.80}")


def build_request(op: str, request_id: int | str | None = None, **fields: Any) -> Message:
    """Return the request object ``{"op": op, **fields, "id": request_id}``.

    ``id`` is left out when ``request_id`` is ``None``. Raises ``ValueError`` for a string
    id longer than the 64 characters the protocol allows.
    """
    if isinstance(request_id, str) and len(request_id) > 64:
        raise ValueError("a request id string is at most 64 characters")
    request: Message = {"op": op, **fields}
    if request_id is not None:
        request["id"] = request_id
    return request


def encode_request(request: Mapping[str, Any]) -> str:
    """Encode a request object as the text of one frame (compact JSON)."""
    return orjson.dumps(request).decode()
