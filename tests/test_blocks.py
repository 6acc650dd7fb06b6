"""Tick files of version 2 (replay.blocks): round trips, the shared decimal table, damage."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feed.decimals import canonical
from feed.events import BookDelta, BookSnapshot, Event, Gap, Trade
from replay import blocks, sample_path
from replay.blocks import BLOCK_EVENTS, MAGIC, PREFIX, BlockWriter, encode_block
from replay.codec import TickHeader, encode_header
from replay.convert import convert
from replay.lines import ProblemKind
from replay.tickfile import TickReader, TickWriter, inspect
from tests.test_tickfile import EVERY_KIND, EXTENSIONS, events

HEADER = encode_header(TickHeader("test", ("BTCUSDT", "ETHUSDT"), version=2)) + b"\n"


def write_blocks(path: Path, blocks: Sequence[bytes]) -> None:
    """A plain version-2 file of these blocks, as they are (damaged ones included)."""
    path.write_bytes(HEADER + b"".join(blocks))


def read(path: Path) -> tuple[list[Event], TickReader]:
    with TickReader(path) as reader:
        return list(reader), reader


@pytest.mark.parametrize("extension", EXTENSIONS)
def test_every_kind_comes_back_as_written(tmp_path: Path, extension: str) -> None:
    path = tmp_path / f"all{extension}"
    with TickWriter(path, source="test", symbols=["BTCUSDT", "ETHUSDT"], version=2) as writer:
        writer.write_all(EVERY_KIND)
    got, reader = read(path)
    assert reader.header.version == 2 and reader.header.source == "test"
    assert got == EVERY_KIND
    assert reader.problems == [] and reader.malformed == 0


def test_blocks_share_their_decimal_table_and_restart_it(tmp_path: Path) -> None:
    many = events(50) + events(50, symbol="ETHUSDT", start=50)
    writer = BlockWriter(size=7)
    blocks = [block for event in many if (block := writer.add(event)) is not None]
    blocks.append(writer.flush() or b"")
    path = tmp_path / "small-blocks.ticks"
    write_blocks(path, blocks)
    assert read(path)[0] == many
    assert inspect(path).events == 100


def test_a_real_capture_reads_the_same_in_both_versions(tmp_path: Path) -> None:
    one, two = tmp_path / "v1.ticks.zst", tmp_path / "v2.ticks.zst"
    convert([sample_path()], one, version=1)
    convert([sample_path()], two, version=2)
    assert read(one)[0] == read(two)[0]


def test_a_flush_ends_the_block_so_what_was_written_reads(tmp_path: Path) -> None:
    path = tmp_path / "live.ticks.zst"
    writer = TickWriter(path, symbols=["BTCUSDT", "ETHUSDT"], version=2)
    writer.write_all(EVERY_KIND[:3])
    writer.flush()
    assert read(path)[0] == EVERY_KIND[:3]  # the stream is not closed yet: cut there
    writer.write_all(EVERY_KIND[3:])
    writer.close()
    assert read(path)[0] == EVERY_KIND


decimals = st.builds(lambda whole, frac: canonical(f"{whole}.{frac}"),
                     st.integers(0, 10**12), st.integers(0, 10**6))
level = st.tuples(decimals, st.one_of(st.just("0"), decimals))
stamp = st.integers(-(2**63), 2**63 - 1)
symbol = st.sampled_from(["BTCUSDT", "ETHUSDT", "XBT/EUR"])
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=8)  # what UTF-8 holds
book_args = (symbol, st.tuples(*[level] * 2) | st.lists(level, max_size=4).map(tuple),
             st.lists(level, max_size=4).map(tuple), stamp, stamp,
             st.none() | st.integers(-(2**63), 2**63 - 1))
any_event = st.one_of(
    st.builds(BookSnapshot, *book_args),
    st.builds(BookDelta, *book_args),
    st.builds(Trade, symbol, st.integers(-(2**63), 2**64 - 1) | text.filter(bool), decimals,
              decimals, st.sampled_from(["buy", "sell"]), stamp, stamp),
    st.builds(Gap, symbol, stamp, stamp, text),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(any_event, min_size=1, max_size=40), st.integers(1, 9))
def test_any_events_come_back_as_written(tmp_path_factory: pytest.TempPathFactory,
                                         written: list[Event], size: int) -> None:
    writer = BlockWriter(size=size)
    blocks = [block for event in written if (block := writer.add(event)) is not None]
    blocks.append(writer.flush() or b"")
    path = tmp_path_factory.mktemp("any") / "any.ticks"
    write_blocks(path, blocks)
    got, reader = read(path)
    assert got == written
    assert all(p.kind is ProblemKind.OUT_OF_ORDER for p in reader.problems)


def test_what_version_2_cannot_hold_is_refused_when_written(tmp_path: Path) -> None:
    path = tmp_path / "refused.ticks.zst"
    with TickWriter(path, symbols=["BTCUSDT"], version=2) as writer:
        writer.write(EVERY_KIND[0])
        with pytest.raises(ValueError, match="version 2 cannot hold"):
            writer.write(BookDelta("BTCUSDT", (), (), 1, 2, 2**63))
        with pytest.raises(ValueError, match="version 2 cannot hold"):
            writer.write(Trade("BTCUSDT", 2**64, "1", "1", "buy", 1, 2))
        writer.write(EVERY_KIND[2])
    assert read(path)[0] == [EVERY_KIND[0], EVERY_KIND[2]]  # the rest is written as ever
    with pytest.raises(ValueError, match="at least one event"):
        encode_block([])


def test_files_joined_with_cat_read_as_one(tmp_path: Path) -> None:
    parts = []
    for i, part in enumerate((EVERY_KIND, events(20, start=5000))):
        path = tmp_path / f"part{i}.ticks.zst"
        with TickWriter(path, symbols=["BTCUSDT", "ETHUSDT"], version=2) as writer:
            writer.write_all(part)
        parts.append(path.read_bytes())
    joined = tmp_path / "joined.ticks.zst"
    joined.write_bytes(b"".join(parts))
    got, reader = read(joined)
    assert got == EVERY_KIND + events(20, start=5000)
    assert reader.problems == []


def test_other_spellings_of_a_number_read_as_one_price(tmp_path: Path) -> None:
    spelled = [BookSnapshot("BTCUSDT", (("100.0", "1.50"),), (), 1, 1, 1),
               BookDelta("BTCUSDT", (("100", "2"), ("0100.00", "3")), (), 2, 2, 2)]
    path = tmp_path / "spelled.ticks"
    write_blocks(path, [encode_block(spelled)])
    (snapshot, delta), _ = read(path)
    assert snapshot.bids == (("100", "1.5"),)  # type: ignore[union-attr]
    assert delta.bids == (("100", "2"), ("100", "3"))  # type: ignore[union-attr]
    with TickReader(path) as reader:
        blocks = reader.blocks()
        assert blocks is not None
        block = next(blocks)
    assert len(set(block.levels[0::2].tolist())) == 1  # one index for the one price


def test_a_bad_block_is_skipped_and_so_is_what_needs_its_decimals(tmp_path: Path) -> None:
    good = events(4)
    bad = [BookDelta("BTCUSDT", (("12.5.1", "1"),), (), 4, 4, 4)]
    after = events(3, start=5)
    table: dict[str, int] = {}
    blocks = [encode_block(good, table), encode_block(bad, table), encode_block(after, table),
              encode_block(after)]  # the last one starts its table afresh
    path = tmp_path / "bad.ticks"
    write_blocks(path, blocks)
    got, reader = read(path)
    assert got == good + after
    assert [(p.kind, p.line) for p in reader.problems] == [
        (ProblemKind.BAD_DECIMAL, 3), (ProblemKind.MALFORMED, 4)]
    assert "a block before it was lost" in reader.problems[1].detail
    assert reader.problems[0].offset == len(HEADER) + len(blocks[0])
    assert reader.malformed == 2


def _with_head(block: bytes, **changes: object) -> bytes:
    """``block`` with keys of its JSON head changed (the prefix made to match)."""
    _, count, head, body = PREFIX.unpack_from(block)
    obj = orjson.loads(block[PREFIX.size:PREFIX.size + head])
    obj.update(changes)
    new = orjson.dumps(obj)
    return PREFIX.pack(MAGIC, count, len(new), body) + new + block[PREFIX.size + head:]


def test_a_repeated_symbol_makes_the_block_bad(tmp_path: Path) -> None:
    block = encode_block([Trade("BTCUSDT", 1, "1", "1", "buy", 1, 1)])
    path = tmp_path / "twice.ticks"
    write_blocks(path, [_with_head(block, sym=["BTCUSDT", "BTCUSDT"]), block])
    got, reader = read(path)
    assert got == [Trade("BTCUSDT", 1, "1", "1", "buy", 1, 1)]
    assert "distinct" in reader.problems[0].detail


def test_a_lost_block_that_started_a_table_loses_the_blocks_that_follow_it(
        tmp_path: Path) -> None:
    def trade(price: str, size: str) -> Trade:
        return Trade("BTCUSDT", 1, price, size, "buy", 1, 1)

    second: dict[str, int] = {}
    blocks = [encode_block([trade("1", "2")]),
              _with_head(encode_block([trade("7", "5")], second), side="x"),  # bad
              encode_block([trade("7", "5")], second)]  # needs the bad one's decimals
    path = tmp_path / "lost-table.ticks"
    write_blocks(path, blocks)
    got, reader = read(path)
    assert got == [trade("1", "2")]  # not the third block read with the first's table
    assert [p.line for p in reader.problems] == [3, 4]
    assert "a block before it was lost" in reader.problems[1].detail


def test_a_cut_file_gives_every_whole_block_before_the_cut(tmp_path: Path) -> None:
    written = events(40_000)
    path = tmp_path / "cut.ticks.zst"
    with TickWriter(path, symbols=["BTCUSDT"], version=2) as writer:
        writer.write_all(written)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) * 2 // 3])
    got, reader = read(path)
    assert got and got == written[:len(got)]
    assert len(got) % BLOCK_EVENTS == 0  # whole blocks only
    assert [p.kind for p in reader.problems] == [ProblemKind.TRUNCATED]


def test_a_half_written_block_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "half.ticks"
    block = encode_block(EVERY_KIND)
    write_blocks(path, [block, block[:40]])
    got, reader = read(path)
    assert got == EVERY_KIND
    assert [(p.kind, p.line) for p in reader.problems] == [(ProblemKind.PARTIAL_LINE, 3)]


def test_garbage_where_a_block_should_start_ends_the_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.ticks"
    write_blocks(path, [encode_block(EVERY_KIND), b"\x00" * 40, encode_block(EVERY_KIND)])
    got, reader = read(path)
    assert got == EVERY_KIND
    assert [(p.kind, p.line) for p in reader.problems] == [(ProblemKind.CORRUPT, 3)]
    assert "not a block" in reader.problems[0].detail


def test_out_of_order_events_are_delivered_and_reported(tmp_path: Path) -> None:
    backwards = [Trade("BTCUSDT", 1, "1", "1", "buy", 5, 10), Trade("BTCUSDT", 2, "1", "1", "buy",
                                                                   5, 9)]
    path = tmp_path / "order.ticks"
    write_blocks(path, [encode_block(backwards), encode_block(backwards)])
    got, reader = read(path)
    assert got == backwards * 2
    assert [(p.kind, p.line) for p in reader.problems] == [
        (ProblemKind.OUT_OF_ORDER, 2), (ProblemKind.OUT_OF_ORDER, 3)]
    assert "event 1 of the block: ts_recv 9 is before the previous event's 10" in \
        reader.problems[0].detail


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 255))
def test_a_damaged_byte_never_breaks_the_reader(tmp_path_factory: pytest.TempPathFactory,
                                                where: int, flip: int) -> None:
    data = bytearray(b"".join(encode_block(EVERY_KIND[i:i + 3]) for i in range(0, 8, 3)))
    data[where % len(data)] ^= flip
    path = tmp_path_factory.mktemp("flip") / "flip.ticks"
    path.write_bytes(HEADER + bytes(data))
    got, reader = read(path)  # no exception, whatever the byte
    assert len(got) <= len(EVERY_KIND)
    if len(got) < len(EVERY_KIND):
        assert reader.problems


def test_the_writer_keeps_blocks_and_tables_within_what_a_reader_takes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blocks, "BLOCK_LEVELS_MAX", 10)
    monkeypatch.setattr(blocks, "MAX_TABLE", 16)
    many = [BookDelta("BTCUSDT", tuple((str(100 + i * 4 + j), "1") for j in range(4)), (),
                      i, i, i) for i in range(30)]
    writer = BlockWriter(size=1000)
    encoded = [block for event in many if (block := writer.add(event)) is not None]
    encoded.append(writer.flush() or b"")
    assert len([b for b in encoded if b]) == 15  # two events (8 levels) a block
    path = tmp_path / "bounded.ticks"
    write_blocks(path, encoded)
    assert read(path)[0] == many  # the table started afresh whenever it passed 8
    with pytest.raises(ValueError, match="over 10 levels"):
        writer.add(BookSnapshot("BTCUSDT", (("1", "1"),) * 11, (), 1, 1, 1))


def test_the_writer_ends_a_block_before_a_reader_would_refuse_its_size(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blocks, "BLOCK_BYTES_MAX", 20_000)
    trades = [Trade("BTCUSDT", f"id-{i}-" + "x" * 1000, "1", "1", "buy", i, i)
              for i in range(40)]
    writer = BlockWriter(size=1000)
    encoded = [block for event in trades if (block := writer.add(event)) is not None]
    encoded.append(writer.flush() or b"")
    assert len([b for b in encoded if b]) > 1
    assert all(len(b) <= 20_000 for b in encoded)
    path = tmp_path / "long-ids.ticks"
    write_blocks(path, encoded)
    assert read(path)[0] == trades
    with pytest.raises(ValueError, match="cannot hold"):
        writer.add(Trade("BTCUSDT", "x" * 5000, "1", "1", "buy", 1, 1))


def test_the_writer_starts_the_table_afresh_before_a_block_would_pass_its_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blocks, "MAX_TABLE", 16)

    def delta(*prices: int) -> BookDelta:
        return BookDelta("BTCUSDT", tuple((str(p), str(p + 1000)) for p in prices), (), 1, 1,
                         None)

    first = [delta(1, 2), delta(3, 4)]  # 8 decimals
    second = [delta(5, 6, 7), delta(8, 9)]  # 10 more: 18 would pass the limit
    writer = BlockWriter(size=2)
    encoded = [block for event in first + second if (block := writer.add(event)) is not None]
    path = tmp_path / "table.ticks"
    write_blocks(path, encoded)
    got, reader = read(path)
    assert got == first + second
    assert reader.problems == []


def test_files_with_long_headers_joined_with_cat_read_as_one(tmp_path: Path) -> None:
    symbols = [f"S{i:07d}" for i in range(300_000)]  # a header of over three megabytes
    parts = []
    for i, part in enumerate((EVERY_KIND, events(20, start=5000))):
        path = tmp_path / f"part{i}.ticks"
        with TickWriter(path, symbols=symbols, version=2) as writer:
            writer.write_all(part)
        parts.append(path.read_bytes())
    assert len(parts[0].split(b"\n", 1)[0]) > 3 << 20
    joined = tmp_path / "joined.ticks"
    joined.write_bytes(b"".join(parts))
    got, reader = read(joined)
    assert got == EVERY_KIND + events(20, start=5000)
    assert reader.problems == []
