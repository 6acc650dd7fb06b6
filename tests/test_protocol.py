import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from feed import protocol
from feed.protocol import RequestError, parse_request


def error_of(data: bytes | str) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse_request(data)
    return info.value


def test_subscribe_book_with_defaults() -> None:
    request = parse_request(b'{"op":"subscribe","id":7,"channel":"book","symbols":["A","B"]}')
    assert request == protocol.Subscribe(7, "book", ("A", "B"), protocol.BookOptions(10, 0, True))


def test_subscribe_book_options() -> None:
    request = parse_request(
        '{"op":"subscribe","channel":"book","symbols":["A"],"depth":1000,"interval_ms":250,'
        '"checksum":false,"id":"x"}')
    assert isinstance(request, protocol.Subscribe)
    assert request.options == protocol.BookOptions(1000, 250, False)
    assert request.id == "x"


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"not json", "bad_request"),
        (b"[1,2]", "bad_request"),
        (b'{"op":"dance"}', "bad_request"),
        (b'{"op":"subscribe","channel":"news","symbols":["A"]}', "unknown_channel"),
        (b'{"op":"subscribe","channel":"book","symbols":[]}', "bad_request"),
        (b'{"op":"subscribe","channel":"book","symbols":"A"}', "bad_request"),
        (b'{"op":"subscribe","channel":"book","symbols":["A","A"]}', "bad_request"),
        (b'{"op":"subscribe","channel":"book","symbols":["A"],"depth":0}', "bad_request"),
        (b'{"op":"subscribe","channel":"book","symbols":["A"],"depth":1001}', "bad_request"),
        (b'{"op":"subscribe","channel":"book","symbols":["A"],"depth":true}', "bad_request"),
        (b'{"op":"subscribe","channel":"book","symbols":["A"],"interval_ms":-1}', "bad_request"),
        (b'{"op":"subscribe","channel":"book","symbols":["A"],"checksum":1}', "bad_request"),
        (b'{"op":"subscribe","channel":"trades","symbols":["A"],"depth":5}', "bad_request"),
        (b'{"op":"subscribe","channel":"book","symbols":["A"],"dept":5}', "bad_request"),
        (b'{"op":"resync","channel":"trades","symbol":"A"}', "bad_request"),
        (b'{"op":"resync","channel":"book"}', "bad_request"),
        (b'{"op":"ping","id":true}', "bad_request"),
        (b'{"op":"ping","id":1.5}', "bad_request"),
    ],
)
def test_bad_requests_name_the_problem(data: bytes, code: str) -> None:
    assert error_of(data).code == code


def test_error_echoes_a_valid_id() -> None:
    assert error_of(b'{"op":"subscribe","id":9,"channel":"x","symbols":["A"]}').request_id == 9
    long_id = "x" * 65
    error = error_of(orjson.dumps({"op": "ping", "id": long_id}))
    assert error.request_id is None and error.code == "bad_request"


def test_messages_have_the_documented_fields() -> None:
    message = protocol.book_update_message("A", 5, 4, [("1", "2")], [], 123, 1, 2, 3)
    assert message == {"type": "book_update", "symbol": "A", "seq": 5, "prev_seq": 4,
                       "bids": [("1", "2")], "asks": [], "checksum": 123,
                       "ts_event": 1, "ts_recv": 2, "ts_send": 3}
    assert orjson.loads(protocol.encode(message))["bids"] == [["1", "2"]]
    error = protocol.error_message("bad_request", "no", None)
    assert "id" not in error


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["op", "id", "channel", "symbols", "symbol", "depth",
                                       "interval_ms", "checksum", "x"]), children, max_size=6),
    max_leaves=12,
)


@given(json_values)
def test_any_json_is_a_request_or_a_request_error(value) -> None:
    try:
        parse_request(json.dumps(value))
    except RequestError as exc:
        error = exc
    else:
        return
    assert error.code in {"bad_request", "unknown_channel"}
    assert error.message
