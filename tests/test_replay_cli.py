"""``tickwire convert``, ``tickwire inspect`` and the replay options of ``tickwire serve``,
as a person runs them (in-process: ``feed.cli.main``)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

import feed.cli
from feed.cli import main
from feed.events import BookDelta, BookSnapshot, Gap, Trade
from replay.cli import Progress, format_ns
from replay.tickfile import TickReader, TickWriter

T0 = 1_723_161_254_000_000_000  # 2024-08-08T23:54:14Z


@pytest.fixture(autouse=True)
def never_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``serve`` here must be refused before it starts: one that started would
    serve until killed, so starting fails the test instead."""
    def started(*args: object) -> None:
        raise AssertionError("the server started instead of refusing")

    monkeypatch.setattr(feed.cli.trio, "run", started)


def write_file(path: Path) -> None:
    with TickWriter(path, source="test", symbols=["BTC", "ETH"]) as writer:
        writer.write(BookSnapshot("BTC", (("100", "1"),), (("101", "1"),), T0, T0, seq=5))
        writer.write(BookDelta("BTC", (("100", "2"),), (), T0 + 1, T0 + 1_000_000, seq=6))
        writer.write(Gap("ETH", T0 + 2, T0 + 2_000_000, "sequence break: expected U=7, got U=9"))
        writer.write(Trade("BTC", 1, "101", "0.5", "buy", T0 + 3, T0 + 3_000_000))


def test_inspect_tells_what_a_file_holds(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         ) -> None:
    path = tmp_path / "day.ticks.zst"
    write_file(path)
    assert main(["inspect", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"{path}: tick file, version 1, source test",
        "  symbols  BTC, ETH",
        "  events   4 (delta 1, gap 1, snapshot 1, trade 1)",
        "  ts_recv  2024-08-08T23:54:14.000000000Z .. 2024-08-08T23:54:14.003000000Z "
        "(0.003 s)",
        "  gaps     1",
        "    2024-08-08T23:54:14.002000000Z ETH: sequence break: expected U=7, got U=9",
        "  damage   0 problem(s), 0 line(s) skipped",
    ]
    assert err == ""  # not a terminal: no progress display


def test_inspect_reports_damage_with_its_position(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "day.ticks"
    write_file(path)
    lines = path.read_bytes().split(b"\n")
    lines[2] = b'{"t":"delta","s":"BTC"'  # line 3: cut short
    path.write_bytes(b"\n".join(lines))
    assert main(["inspect", str(path)]) == 1
    out = capsys.readouterr().out
    assert "  events   3 (gap 1, snapshot 1, trade 1)" in out
    assert "  damage   1 problem(s), 1 line(s) skipped" in out
    offset = len(lines[0]) + len(lines[1]) + 2
    assert f"    {path}:3 (byte {offset}): malformed:" in out


def test_convert_writes_one_tick_file_and_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "day.ticks"
    write_file(src)
    dst = tmp_path / "out.ticks.zst"
    assert main(["convert", str(src), "-o", str(dst)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{dst}: 4 events in ") and out.endswith(" bytes\n")
    assert err == ""
    with TickReader(src) as a, TickReader(dst) as b:
        assert list(a) == list(b)


def test_unreadable_input_is_exit_status_2(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.txt"
    junk.write_text("hello\n")
    assert main(["inspect", str(junk)]) == 2
    assert "neither a tick file nor" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "missing.gz"), "-o", str(tmp_path / "x.ticks")]) == 2


@pytest.mark.parametrize(("args", "message"), [
    (["--symbols", "BTC,DOGE"], "feed.symbols: not in the files: DOGE (they hold BTC, ETH)"),
    (["--from", "yesterday"], "feed.start: expected ISO-8601 or nanoseconds"),
    (["--to", "2024-13-01"], "feed.end: expected ISO-8601"),
    (["--speed", "0"], "feed.speed"),
])
def test_serve_refuses_bad_replay_options(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          args: list[str], message: str) -> None:
    path = tmp_path / "day.ticks"
    write_file(path)
    assert main(["serve", str(path), "--port", "0", *args]) == 2
    assert message in capsys.readouterr().err


def test_symbols_and_times_do_not_apply_to_the_synthetic_market(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--synthetic", "100", "--symbols", "BTC"]) == 2
    assert "synthetic_symbols (a number)" in capsys.readouterr().err


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_on_a_terminal_only() -> None:
    term = Terminal()
    progress = Progress("reading x", 1000, stream=term, hz=1e9)
    progress(8192)
    progress.clear()
    drawn = term.getvalue()
    assert drawn.startswith("\rreading x: ") and "8,192 events" in drawn
    assert drawn.endswith("\r")
    quiet = io.StringIO()
    Progress("reading x", 1000, stream=quiet)(8192)
    assert quiet.getvalue() == ""


def test_format_ns_keeps_nanoseconds() -> None:
    assert format_ns(T0 + 123_456_789) == "2024-08-08T23:54:14.123456789Z"


def test_one_symbol_from_two_markets_is_refused(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    spot, perp = tmp_path / "spot.ticks", tmp_path / "perp.ticks"
    event = BookSnapshot("BTCUSDT", (("100", "1"),), (), T0, T0, seq=1)
    for path, source in ((spot, "binance-spot"), (perp, "binance-usdm")):
        with TickWriter(path, source=source, symbols=["BTCUSDT"]) as writer:
            writer.write(event)
    assert main(["convert", str(spot), str(perp), "-o", str(tmp_path / "x.ticks")]) == 2
    assert (f"BTCUSDT is binance-spot in {spot} but binance-usdm in {perp}"
            in capsys.readouterr().err)
    assert main(["serve", str(spot), str(perp), "--port", "0"]) == 2
    assert "one symbol cannot be two markets" in capsys.readouterr().err
    # The same market twice (say, two files of one recording) merges.
    assert main(["convert", str(spot), str(spot), "-o", str(tmp_path / "y.ticks")]) == 0


def test_convert_never_overwrites_an_input(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "day.ticks"
    write_file(path)
    before = path.read_bytes()
    assert main(["convert", str(path), "-o", str(path)]) == 2
    assert "is also an input" in capsys.readouterr().err
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["day.ticks"]  # nothing left over


@pytest.mark.parametrize(("args", "message"), [
    (["--from", "2024-08-08T23:55:00Z", "--to", "2024-08-08T23:54:00Z"],
     "feed.start (2024-08-08T23:55:00Z) must be before feed.end"),
    (["--symbols", "5"], "--symbols 5: a number is the synthetic market's symbol count"),
    (["--from", "1723161300"], "feed.start: '1723161300' is not nanoseconds"),
])
def test_serve_refuses_options_that_contradict(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               args: list[str], message: str) -> None:
    path = tmp_path / "day.ticks"
    write_file(path)
    assert main(["serve", str(path), "--port", "0", *args]) == 2
    assert message in capsys.readouterr().err


def test_an_unreadable_file_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    unreadable = "/proc/self/mem"  # a regular file whose first read fails (EIO), even for root
    if not Path(unreadable).is_file():
        pytest.skip(f"no {unreadable} on this system")
    assert main(["serve", unreadable, "--port", "0"]) == 2
    assert (f"feed.files: cannot read {unreadable}: Input/output error"
            in capsys.readouterr().err)
