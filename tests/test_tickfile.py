"""Tick files: round trips, damage, streaming, merging (replay.lines, replay.codec,
replay.tickfile, replay.sources)."""

from __future__ import annotations

import gc
import gzip
import random
import shutil
import subprocess
import sys
import tracemalloc
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

import replay
from feed.decimals import canonical
from feed.events import BookDelta, BookSnapshot, Event, Gap, Trade
from replay.codec import BadHeader, TickHeader, decode_event, encode_event, encode_header
from replay.lines import LineStream, ProblemKind
from replay.sources import EventStream, SourceKind, UnknownSource, detect, open_events
from replay.tickfile import TickReader, TickWriter, inspect

EXTENSIONS = [".ticks", ".ticks.gz", ".ticks.zst"]

EVERY_KIND: list[Event] = [
    BookSnapshot("BTCUSDT", (("61837.63", "3.78826"), ("61837.62", "0.617")),
                 (("61837.64", "1.54698"),), 1_000, 2_000, 50093239218),
    BookSnapshot("ETHUSDT", (), (), 1_001, 2_001, None),
    BookDelta("BTCUSDT", (("61837.63", "0"),), (("61840", "0.001"),), 1_002, 2_002, 50093239224),
    BookDelta("ETHUSDT", (), (("2683.81", "31.4395"),), 1_003, 2_003, None),
    Trade("BTCUSDT", 3735683259, "61837.63", "0.02", "sell", 1_004, 2_004),
    Trade("ETHUSDT", "abc-17", "2683.8", "0.002", "buy", 1_005, 2_005),
    Gap("BTCUSDT", 1_006, 2_006, "sequence break: expected U=5, got U=9"),
    Gap("ETHUSDT", 1_007, 2_007),
]


def events(n: int, symbol: str = "BTCUSDT", levels: int = 3, start: int = 0) -> list[Event]:
    """``n`` varied events with ``ts_recv`` = start, start+1, ..."""
    out: list[Event] = []
    for i in range(n):
        ts = start + i
        if i % 3 == 0:
            bids = tuple((canonical(f"{60000 + j}.{i % 100}"), canonical(f"0.{i + 1}"))
                         for j in range(levels))
            out.append(BookDelta(symbol, bids, (("61000", "1"),), ts, ts, i))
        elif i % 3 == 1:
            out.append(Trade(symbol, i, f"{60000 + i}.5", "0.25", "buy", ts, ts))
        else:
            out.append(Trade(symbol, str(i), "60000", canonical(f"{i}.125"), "sell", ts, ts))
    return out


def write(path: Path, evs: Sequence[Event], **header: object) -> Path:
    with TickWriter(path, **header) as writer:  # type: ignore[arg-type]
        writer.write_all(evs)
    return path


def line_offsets(evs: Sequence[Event]) -> list[int]:
    """Uncompressed byte offset of each line (header first) of a plain-header file."""
    offsets = [0]
    size = len(encode_header(TickHeader())) + 1
    for event in evs:
        offsets.append(size)
        size += len(encode_event(event)) + 1
    return offsets


def read_all(path: Path) -> tuple[list[Event], TickReader]:
    with TickReader(path) as reader:
        return list(reader), reader


# -- round trips ------------------------------------------------------------------


@pytest.mark.parametrize("ext", EXTENSIONS)
def test_round_trip_every_kind(tmp_path: Path, ext: str) -> None:
    path = write(tmp_path / f"all{ext}", EVERY_KIND, source="test", symbols=["BTCUSDT", "ETHUSDT"])
    got, reader = read_all(path)
    assert got == EVERY_KIND
    assert reader.header == TickHeader("test", ("BTCUSDT", "ETHUSDT"))
    assert reader.problems == []
    assert reader.malformed == 0


@pytest.mark.parametrize(
    ("ext", "magic"),
    [(".ticks", b'{"format"'), (".ticks.gz", b"\x1f\x8b"), (".ticks.zst", b"\x28\xb5\x2f\xfd")],
)
def test_compression_follows_the_name(tmp_path: Path, ext: str, magic: bytes) -> None:
    path = write(tmp_path / f"x{ext}", EVERY_KIND)
    assert path.read_bytes().startswith(magic)
    # Reading goes by content: a misnamed file still reads.
    misnamed = tmp_path / "misnamed.ticks"
    shutil.copy(path, misnamed)
    assert read_all(misnamed)[0] == EVERY_KIND


def test_header_with_span_and_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "h.ticks"
    path.write_bytes(
        b'{"format":"tickwire-ticks","version":1,"ts_first":5,"ts_last":9,"note":"x"}\n'
    )
    with TickReader(path) as reader:
        assert reader.header.ts_first == 5
        assert reader.header.ts_last == 9
        assert reader.header.extra == (("note", "x"),)
        assert list(reader) == []


@pytest.mark.parametrize(
    "first_line",
    [b"", b"hello\n", b'{"format":"other"}\n', b'{"format":"tickwire-ticks","version":3}\n',
     b'{"format":"tickwire-ticks","version":1,"ts_first":1.5}\n'],
)
def test_bad_header_raises_on_open(tmp_path: Path, first_line: bytes) -> None:
    path = tmp_path / "bad.ticks"
    path.write_bytes(first_line + encode_event(EVERY_KIND[0]) + b"\n")
    with pytest.raises(BadHeader):
        TickReader(path)


def test_decimals_are_canonicalized_on_read(tmp_path: Path) -> None:
    path = tmp_path / "loose.ticks"
    path.write_bytes(
        encode_header(TickHeader()) + b"\n"
        b'{"t":"delta","s":"X","te":1,"tr":2,"q":3,"b":[["061737.6300","0.000"]],"a":[["1e-3","5."]]}\n'
        b'{"t":"trade","s":"X","te":1,"tr":2,"id":7,"p":"100.10","z":"00.5","side":"buy"}\n'
    )
    got, reader = read_all(path)
    assert got == [
        BookDelta("X", (("61737.63", "0"),), (("0.001", "5"),), 1, 2, 3),
        Trade("X", 7, "100.1", "0.5", "buy", 1, 2),
    ]
    assert reader.problems == []


spelling = st.from_regex(r"[+-]?[0-9]{0,4}(\.[0-9]{0,3})?(e-?[0-9])?", fullmatch=True)


@given(st.lists(st.tuples(spelling, spelling), max_size=4), st.sampled_from(["delta", "snapshot"]))
@settings(max_examples=300, deadline=None)
def test_book_lines_decode_alike_however_spelled(raw: list[tuple[str, str]], kind: str) -> None:
    """A line as the writer spells it takes a fast way through decode_event, any other
    spelling (here: one space more) the careful way: both give the same event, or both
    refuse the line."""
    levels = [list(level) for level in raw]
    written = orjson.dumps({"t": kind, "s": "X", "te": 1, "tr": 2, "q": 3, "b": levels,
                            "a": levels[::-1]})
    spaced = written.replace(b'"b":', b'"b": ')
    outcomes = []
    for line in (written, spaced):
        try:
            outcomes.append(decode_event(line))
        except ValueError as exc:
            outcomes.append(type(exc))
    assert outcomes[0] == outcomes[1]
    if not isinstance(outcomes[0], type):
        assert outcomes[0].bids == tuple((canonical(p), canonical(s)) for p, s in raw)


decimal_text = st.decimals(min_value=0, max_value=10**9, places=8).map(lambda d: canonical(str(d)))
level = st.tuples(decimal_text, decimal_text)
levels = st.lists(level, max_size=5).map(tuple)
ns = st.integers(min_value=0, max_value=2**63 - 1)
symbol = st.text(st.sampled_from("ABCDEFXYZ_-0123456789"), min_size=1, max_size=12)
any_event = st.one_of(
    st.builds(BookSnapshot, symbol, levels, levels, ns, ns, st.none() | ns),
    st.builds(BookDelta, symbol, levels, levels, ns, ns, st.none() | ns),
    st.builds(Trade, symbol, ns | st.text(min_size=1, max_size=10), decimal_text, decimal_text,
              st.sampled_from(["buy", "sell"]), ns, ns),
    st.builds(Gap, symbol, ns, ns, st.text(max_size=30)),
)


@settings(max_examples=300, deadline=None)
@given(any_event)
def test_codec_round_trips_any_event(event: Event) -> None:
    line = encode_event(event)
    assert b"\n" not in line
    assert decode_event(line) == event


# -- damage -----------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".ticks.gz", ".ticks.zst"])
@pytest.mark.parametrize("keep", [0.3, 0.7, 0.95])
def test_cut_compressed_stream_reads_up_to_the_damage(
    tmp_path: Path, ext: str, keep: float
) -> None:
    evs = events(30_000)
    whole = write(tmp_path / f"whole{ext}", evs)
    data = whole.read_bytes()
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(data[: int(len(data) * keep)])
    got, reader = read_all(cut)  # must not raise
    assert 0 < len(got) < len(evs)
    assert got == evs[: len(got)]
    assert reader.malformed == 0
    [problem] = reader.problems
    assert problem.kind is ProblemKind.TRUNCATED
    assert problem.path == str(cut)
    # The position is that of the first line not delivered (line 1 is the header).
    assert problem.line == len(got) + 2
    assert problem.offset == line_offsets(evs)[len(got) + 1]


@pytest.mark.parametrize("ext", [".ticks.gz", ".ticks.zst"])
def test_corrupt_compressed_data_stops_with_a_problem(tmp_path: Path, ext: str) -> None:
    evs = events(20_000)
    data = bytearray(write(tmp_path / f"whole{ext}", evs).read_bytes())
    at = len(data) * 7 // 10
    data[at : at + 64] = bytes(64)  # zeroed block, as a bad disk sector would
    bad = tmp_path / f"bad{ext}"
    bad.write_bytes(bytes(data))
    got, reader = read_all(bad)  # must not raise
    # Data before the damage is intact. (What the decompressor made of the damaged
    # block before it noticed may be garbage: such lines are skipped as malformed.)
    assert got[: len(evs) // 3] == evs[: len(evs) // 3]
    assert len(got) < len(evs)
    assert reader.problems[-1].kind is ProblemKind.CORRUPT
    assert all(p.kind is not ProblemKind.TRUNCATED for p in reader.problems)


@pytest.mark.parametrize("ext", EXTENSIONS)
def test_half_written_last_line(tmp_path: Path, ext: str) -> None:
    evs = events(50)
    text = encode_header(TickHeader()) + b"\n"
    text += b"".join(encode_event(e) + b"\n" for e in evs)
    text += encode_event(events(1, start=99)[0])[:25]  # the writer died mid-line
    path = tmp_path / f"half{ext}"
    if ext.endswith(".gz"):
        path.write_bytes(gzip.compress(text, mtime=0))  # complete stream, partial line
    elif ext.endswith(".zst"):
        path.write_bytes(zstandard.ZstdCompressor().compress(text))
    else:
        path.write_bytes(text)
    got, reader = read_all(path)
    assert got == evs
    [problem] = reader.problems
    assert problem.kind is ProblemKind.PARTIAL_LINE
    end_of_last_good_line = line_offsets(evs)[-1] + len(encode_event(evs[-1])) + 1
    assert (problem.line, problem.offset) == (52, end_of_last_good_line)


def test_garbage_lines_in_the_middle_are_skipped_and_counted(tmp_path: Path) -> None:
    evs = events(10)
    bad_lines = [
        b"\x00\x13garbage \xff not json",
        b'{"t":"trade","s":"X","te":1,"tr":2,"id":7,"p":"1,5","z":"1","side":"buy"}',
        b'{"t":"trade","s":"X","te":1.5,"tr":2,"id":7,"p":"1","z":"1","side":"buy"}',
        b'{"t":"delta","s":"X","te":1,"tr":2,"b":[[1.5,"2"]],"a":[]}',
        b'{"t":"delta","s":"X","te":1,"tr":2,"b":[["1","-2"]],"a":[]}',
        b'{"t":"mystery","s":"X","te":1,"tr":2}',
        b"[1,2,3]",
        b"",
    ]
    lines = [encode_header(TickHeader())] + [encode_event(e) for e in evs[:5]]
    lines += bad_lines + [encode_event(e) for e in evs[5:]]
    path = tmp_path / "garbage.ticks.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(b"".join(x + b"\n" for x in lines)))
    got, reader = read_all(path)
    assert got == evs
    assert reader.malformed == len(bad_lines)
    assert [p.line for p in reader.problems] == list(range(7, 7 + len(bad_lines)))
    offsets = [sum(len(x) + 1 for x in lines[: p.line - 1]) for p in reader.problems]
    assert [p.offset for p in reader.problems] == offsets
    kinds = [p.kind for p in reader.problems]
    assert kinds.count(ProblemKind.BAD_DECIMAL) == 2  # "1,5" and "-2"
    assert set(kinds) == {ProblemKind.MALFORMED, ProblemKind.BAD_DECIMAL}
    assert "garbage.ticks.zst:7 (byte" in str(reader.problems[0])


def test_flush_makes_a_readable_prefix_while_writing(tmp_path: Path) -> None:
    for ext in (".ticks.gz", ".ticks.zst"):
        path = tmp_path / f"live{ext}"
        evs = events(100)
        with TickWriter(path) as writer:
            writer.write_all(evs)
            writer.flush()
            copy = tmp_path / f"copy{ext}"
            shutil.copy(path, copy)  # what a reader (or a crash) would see now
            got, reader = read_all(copy)
            assert got == evs
            assert [p.kind for p in reader.problems] == [ProblemKind.TRUNCATED]
        got, reader = read_all(path)
        assert got == evs
        assert reader.problems == []


def test_concatenated_members_frames_and_zero_padding_read_as_one(tmp_path: Path) -> None:
    evs = events(20)
    head = encode_header(TickHeader()) + b"\n"
    first = head + b"".join(encode_event(e) + b"\n" for e in evs[:7])
    rest = b"".join(encode_event(e) + b"\n" for e in evs[7:])
    gz = tmp_path / "two.ticks.gz"
    gz.write_bytes(gzip.compress(first) + bytes(100) + gzip.compress(rest) + bytes(7))
    zst = tmp_path / "two.ticks.zst"
    zc = zstandard.ZstdCompressor()
    zst.write_bytes(zc.compress(first) + zc.compress(rest))
    for path in (gz, zst):
        got, reader = read_all(path)
        assert got == evs
        assert reader.problems == []


def test_out_of_order_events_are_reported_not_dropped(tmp_path: Path) -> None:
    evs = [Gap("X", 1, 5), Gap("X", 1, 3), Gap("X", 1, 6)]
    got, reader = read_all(write(tmp_path / "ooo.ticks", evs))
    assert got == evs
    assert [(p.kind, p.line) for p in reader.problems] == [(ProblemKind.OUT_OF_ORDER, 3)]


# -- streaming --------------------------------------------------------------------


def test_reader_is_a_lazy_iterator_in_constant_memory(tmp_path: Path) -> None:
    rng = random.Random(7)
    letters = "abcdefghijklmnopqrstuvwxyz0123456789 "
    count = 400
    evs = (Gap("X", i, i, "".join(rng.choices(letters, k=40_000))) for i in range(count))
    path = tmp_path / "big.ticks.zst"
    with TickWriter(path) as writer:
        writer.write_all(evs)
    uncompressed = count * 40_050
    assert path.stat().st_size > 10_000_000  # random text barely compresses

    tracemalloc.start()
    try:
        with TickReader(path) as reader:
            assert isinstance(reader, Iterator)
            assert iter(reader) is reader
            assert next(reader).ts_recv == 0
            seen = 1
            for _ in reader:
                seen += 1
            assert reader.problems == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == count
    # A decoded chunk, a line and an event at a time: far less than the ~16 MB stream.
    assert peak < 1_500_000, f"peak {peak} bytes for a {uncompressed}-byte stream"


def test_line_stream_drops_an_over_long_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("replay.lines.MAX_LINE", 100)
    path = tmp_path / "long.txt"
    path.write_bytes(b"a\n" + b"x" * 1000 + b"\nb\n")
    with LineStream(path, chunk_size=64) as lines:
        got = [(n, off, line) for n, off, line in lines]
        assert got == [(1, 0, b"a"), (3, 1003, b"b")]
        assert [(p.kind, p.line, p.offset) for p in lines.problems] == [
            (ProblemKind.MALFORMED, 2, 2)
        ]


def test_inspect_computes_the_span(tmp_path: Path) -> None:
    path = write(tmp_path / "i.ticks.gz", EVERY_KIND, source="s")
    info = inspect(path)
    assert info.header.ts_first is None  # a streaming writer does not know it
    assert (info.ts_first, info.ts_last) == (2_000, 2_007)
    assert info.events == 8
    assert dict(info.kinds) == {"snapshot": 2, "delta": 2, "trade": 2, "gap": 2}
    assert info.symbols == ("BTCUSDT", "ETHUSDT")


# -- sources ----------------------------------------------------------------------


def test_merge_in_ts_recv_order_with_stable_ties(tmp_path: Path) -> None:
    def gaps(name: str, times: list[int]) -> list[Event]:
        return [Gap(name, 0, t, f"{name}{i}") for i, t in enumerate(times)]

    a = gaps("A", [1, 3, 3, 5, 9])
    b = gaps("B", [0, 3, 5, 5, 9])
    c = gaps("C", [3, 4, 9])
    paths = [write(tmp_path / "a.ticks", a), write(tmp_path / "b.ticks.gz", b),
             write(tmp_path / "c.ticks.zst", c)]
    with open_events(paths) as stream:
        got = [(e.ts_recv, e.reason) for e in stream if isinstance(e, Gap)]
    assert got == [
        (0, "B0"), (1, "A0"),
        (3, "A1"), (3, "A2"), (3, "B1"), (3, "C0"),  # file order, then line order
        (4, "C1"),
        (5, "A3"), (5, "B2"), (5, "B3"),
        (9, "A4"), (9, "B4"), (9, "C2"),
    ]
    # The same files in another order tie-break the other way.
    with open_events(paths[::-1]) as stream:
        order = [e.reason for e in stream if isinstance(e, Gap) and e.ts_recv == 3]
    assert order == ["C0", "B1", "A1", "A2"]


def test_merge_is_lazy_and_collects_every_readers_problems(tmp_path: Path) -> None:
    good = write(tmp_path / "good.ticks", events(1_000, "A"))
    data = write(tmp_path / "whole.ticks.zst", events(30_000, "B")).read_bytes()
    cut = tmp_path / "cut.ticks.zst"
    cut.write_bytes(data[: len(data) // 2])
    with open_events([good, cut]) as stream:
        assert isinstance(stream, Iterator)
        assert next(stream).ts_recv == 0
        assert stream.problems == []  # nothing read far enough to find it yet
        rest = list(stream)
        assert [p.kind for p in stream.problems] == [ProblemKind.TRUNCATED]
        assert stream.problems[0].path == str(cut)
    times = [e.ts_recv for e in rest]
    assert times == sorted(times)


def test_readers_dropped_half_read_close_their_files(tmp_path: Path) -> None:
    path = write(tmp_path / "x.ticks.zst", events(1_000))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reader = TickReader(path)
        next(reader)
        del reader
        stream = open_events([path, path])
        next(stream)
        del stream
        EventStream([path]).symbols()  # made, asked, dropped
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_symbols_are_known_before_replaying(tmp_path: Path) -> None:
    named = write(tmp_path / "named.ticks", events(3, "AAA"), symbols=["AAA", "ZZZ"])
    unnamed = write(tmp_path / "unnamed.ticks.gz", events(3, "BBB") + events(3, "CCC", start=3))
    with EventStream([named, unnamed]) as stream:
        assert stream.symbols() == ("AAA", "ZZZ", "BBB", "CCC")
        assert len(list(stream)) == 9
        assert stream.problems == []


def test_detect_and_unknown_files(tmp_path: Path) -> None:
    ticks = write(tmp_path / "t.ticks.gz", EVERY_KIND)
    assert detect(ticks) is SourceKind.TICKS
    capture = tmp_path / "cap.gz"
    capture.write_bytes(gzip.compress(b'1723161253937085768 {"stream":"x@trade","data":{}}\n'))
    assert detect(capture) is SourceKind.BINANCE
    other = tmp_path / "other.txt"
    other.write_bytes(b"just some text\n")
    with pytest.raises(UnknownSource):
        open_events([ticks, other])
    empty = tmp_path / "empty.ticks"
    empty.write_bytes(b"")
    with pytest.raises(UnknownSource):
        detect(empty)


# -- the bundled sample -------------------------------------------------------------


def test_bundled_sample_is_small_clean_and_starts_with_a_snapshot() -> None:
    path = replay.sample_path()
    assert path.is_file()
    assert path.name.endswith(".ticks.zst")
    assert path.stat().st_size < 400_000
    assert (path.parent / "LICENSE").is_file()
    assert (path.parent / "README.md").is_file()
    info = inspect(path)
    assert info.problems == ()
    assert info.malformed == 0
    assert info.header.ts_first == info.ts_first
    assert info.header.ts_last == info.ts_last
    assert info.ts_first is not None
    assert info.ts_last is not None
    assert 60e9 <= info.ts_last - info.ts_first <= 120e9
    with open_events([path]) as stream:
        first = next(stream)
        assert isinstance(first, BookSnapshot)
        assert first.seq is not None
        seq = first.seq
        for event in stream:
            assert not isinstance(event, Gap | BookSnapshot)
            if isinstance(event, BookDelta):
                assert event.seq is not None
                assert event.seq > seq
                seq = event.seq


def test_replay_touches_neither_trio_nor_sockets() -> None:
    code = (
        "import sys, replay, replay.convert, replay.make_sample, replay.__main__\n"
        "print(sorted(m for m in ('trio', 'socket', 'wsproto', 'asyncio') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() == "[]"
