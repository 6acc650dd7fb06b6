"""The load generator: its frame counting without a socket, then one short real run
against a spawned synthetic server (about 5 s) that must give self-consistent figures
and leave no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from benchmarks import matrix
from clients.loadgen import (
    OP_BINARY,
    OP_CLOSE,
    FrameError,
    FrameReader,
    LatencyHistogram,
    LoadConfig,
    LoadError,
    ServerLog,
    decode_messages,
    metric_by_label,
    metric_total,
    parse_metrics,
    percentile,
    run,
)
from clients.loadgen.check import Checker, faults
from clients.loadgen.compare import compare, comparison_json, format_comparison
from clients.loadgen.metrics import process_tree_cpu_s
from clients.loadgen.plot import plot
from clients.loadgen.report import server_figures
from tests.helpers import children


def server_frame(payload: bytes, opcode: int = OP_BINARY, rsv1: bool = False) -> bytes:
    """An unmasked server frame, FIN set, with the shortest length encoding."""
    first = 0x80 | (0x40 if rsv1 else 0) | opcode
    size = len(payload)
    if size < 126:
        return bytes((first, size)) + payload
    if size < 1 << 16:
        return bytes((first, 126)) + size.to_bytes(2, "big") + payload
    return bytes((first, 127)) + size.to_bytes(8, "big") + payload


def deflated(payload: bytes) -> bytes:
    """A message as permessage-deflate sends it with no context takeover."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


def message(seq: int, pad: int = 0) -> bytes:
    return orjson.dumps({"type": "book_update", "seq": seq, "ts_recv": 1, "pad": "x" * pad})


def test_counts_every_frame_whatever_the_chunking() -> None:
    # 7-bit, 16-bit and 64-bit payload lengths, a compressed one, then a close.
    frames = [server_frame(message(1)), server_frame(message(2, 300)),
              server_frame(message(3, 70_000)),
              server_frame(deflated(message(4, 500)), rsv1=True),
              server_frame((4001).to_bytes(2, "big") + b"slow", OP_CLOSE)]
    stream = b"".join(frames)
    for chunk in (5, 1000, len(stream)):
        reader = FrameReader(sample_every=2)
        picked = []
        for i in range(0, len(stream), chunk):
            picked += reader.feed(stream[i:i + chunk])
        assert reader.messages == 4 and reader.bytes == len(stream)
        assert [f.opcode for f in picked] == [OP_BINARY, OP_BINARY, OP_CLOSE]
        assert [decode_messages(f)[0]["seq"] for f in picked[:2]] == [2, 4]
        assert picked[1].compressed and picked[2].payload[:2] == b"\x0f\xa1"


def test_a_masked_frame_is_refused() -> None:
    with pytest.raises(FrameError):
        FrameReader().feed(b"\x82\x81abcdx")


def test_figures_helpers() -> None:
    series = parse_metrics('# HELP x\nprocess_cpu_seconds_total 1.5\n'
                           'tickwire_closes_total{code="1000"} 3.0\n'
                           'tickwire_closes_total{code="4001"} 1.0\n')
    assert metric_total(series, "process_cpu_seconds_total") == 1.5
    assert metric_total(series, "tickwire_closes_total") == 4
    assert metric_by_label(series, "tickwire_closes_total") == {"1000": 3, "4001": 1}
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile([5], 50) == 5


def test_server_figures_take_the_cpu_of_every_server_process() -> None:
    before = parse_metrics("process_cpu_seconds_total 1.0\ntickwire_messages_sent_total 0\n")
    after = parse_metrics("process_cpu_seconds_total 2.0\ntickwire_messages_sent_total 1e6\n"
                          "tickwire_workers 2.0\n")
    assert server_figures(before, after, 2.0).cpu_s == 1.0  # the answering process's
    figures = server_figures(before, after, 2.0, cpu_s=3.0)  # all of them, from /proc
    assert (figures.cpu_s, figures.cpu_cores, figures.workers) == (3.0, 1.5, 2)
    assert server_figures(before, before, 1.0).workers == 1


# A process that burns 0.3 s of CPU in itself and as much in a child, then waits for
# its stdin to close.
BURN = ("import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
        "print('burnt', flush=True)\n")
PARENT = ("import subprocess, sys\n"
          f"child = subprocess.Popen([sys.executable, '-c', {BURN + 'input()'!r}], "
          "stdin=subprocess.PIPE)\n"
          f"{BURN}sys.stdin.read()\nchild.stdin.close()\nchild.wait()\n")


def own_cpu_s(pid: int) -> float:
    """User and system CPU of ``pid`` itself (Linux /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_process_tree_cpu_counts_every_descendant() -> None:
    process = await trio.lowlevel.open_process([sys.executable, "-c", PARENT],
                                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    try:
        output = b""
        with trio.fail_after(30):
            while output.count(b"burnt") < 2:
                data = await process.stdout.receive_some(1024)
                assert data, output
                output += data
        own, tree = own_cpu_s(process.pid), process_tree_cpu_s(process.pid)
        assert tree is not None and tree >= 0.6 and tree >= own + 0.25
        await process.stdin.aclose()
        with trio.fail_after(10):
            assert await process.wait() == 0
        assert process_tree_cpu_s(process.pid) is None
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_hdr_histograms_merge_exactly_and_clip() -> None:
    values = [i * 1_000 for i in range(1, 2001)]  # 1 us .. 2 ms
    parts = [LatencyHistogram() for _ in range(3)]
    for i, value in enumerate(values):
        parts[i % 3].record(value)
    whole = LatencyHistogram()
    for value in values:
        whole.record(value)
    merged = LatencyHistogram.merged(p.encode() for p in parts)
    assert merged.count == 2000
    for pct in (50, 90, 99, 99.9, 99.99):
        assert merged.percentile_ms(pct) == whole.percentile_ms(pct)
    assert merged.percentile_ms(50) == pytest.approx(1.0, rel=1e-3)  # 3 significant digits
    assert merged.max_ms() == pytest.approx(2.0, rel=1e-3)
    far = LatencyHistogram()
    far.record(10**15)  # a replay's ts_event from another year
    far.record(-5)  # a clock behind
    again = LatencyHistogram.merged([far.encode()])
    assert (again.clipped, again.negative, again.count) == (1, 1, 2)
    assert again.max_ms() == pytest.approx(3_600_000, rel=1e-3)
    assert LatencyHistogram().percentile_ms(50) is None


async def test_config_needs_one_server() -> None:
    with pytest.raises(LoadError):
        await run(LoadConfig())


async def test_a_short_run_against_a_spawned_server() -> None:
    log = ServerLog()
    config = LoadConfig(spawn="--synthetic 500 --symbols 2", connections=4, workers=1,
                        duration=2.0, warmup=0.5, channel="book", depth=10, compress=True,
                        sample_every=4)
    with trio.fail_after(30):
        report = await run(config, log)

    assert report.workers == 1 and len(report.per_connection) == 4
    assert report.compressed_connections == 4
    assert report.compression_ratio is not None and report.compression_ratio > 1.1
    assert report.symbols == ("SYN-BTC", "SYN-ETH")
    assert 1.8 < report.window_s < 2.5
    assert report.messages > 0 and report.bytes > 0
    assert sum(c.messages for c in report.per_connection) == report.messages
    assert sum(c.bytes for c in report.per_connection) == report.bytes
    assert report.messages_per_s == pytest.approx(
        sum(c.messages_per_s for c in report.per_connection), abs=1)
    assert (0 < report.per_connection_min <= report.per_connection_median
            <= report.per_connection_max)
    assert all(c.error is None and not c.closed_early for c in report.per_connection)
    # Every subscriber of one group gets the same frames.
    assert len({c.messages for c in report.per_connection}) <= 2

    lat = report.latency
    assert lat.samples == sum(report.sampled_types.get(t, 0) for t in ("book_update", "bbo",
                                                                       "trade"))
    figures = [lat.p50_ms, lat.p90_ms, lat.p99_ms, lat.p99_9_ms, lat.p99_99_ms, lat.max_ms]
    assert all(f is not None for f in figures)
    assert 0 < figures[0] and figures == sorted(figures) and figures[-1] < 5000
    # ts_send comes after ts_recv, and ts_event (the synthetic market's) is ts_recv.
    assert lat.from_send["p50_ms"] is not None and lat.from_send["p50_ms"] <= lat.p50_ms
    assert lat.from_event["p50_ms"] == lat.p50_ms and lat.clipped == 0
    for c in report.per_connection:
        assert c.latency_p50_ms is not None and c.latency_p99_ms is not None
        assert 0 < c.latency_p50_ms <= c.latency_p99_ms <= lat.max_ms
    assert report.sampled_types.get("book_update", 0) > 0 and report.decode_errors == 0

    server = report.server
    assert server is not None
    assert server.cpu_us_per_message is not None and server.cpu_us_per_message > 0
    assert server.cpu_s > 0 and server.messages_sent > 0
    # What the server counted as sent in the window is what the subscribers counted,
    # give or take the frames in flight at its two edges.
    assert abs(server.messages_sent - report.messages) <= 0.1 * report.messages + 20
    assert server.lag_events == 0 and server.closes == {}
    # The worker's checking connection read every message and found nothing wrong.
    assert report.checked_connections == 1 and faults(report.checks) == 0
    assert report.checks["book_messages"] >= report.per_connection[0].messages
    assert [w.connections for w in report.worker_figures] == [4]
    assert 0 < report.worker_figures[0].cpu_cores < 0.9

    # Every process the run started is gone (and reaped).
    assert report.server_pid is not None
    for pid in (report.server_pid, report.worker_figures[0].pid):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert any(line.startswith("listening on ") for line in log.lines)
    assert log.errors == 0


async def test_compare_measures_each_server_under_the_same_load(tmp_path: Path) -> None:
    config = LoadConfig(spawn="--synthetic 500 --symbols 2", connections=2, workers=1,
                        duration=1.0, warmup=0.5, channel="book", depth=10, compress=False,
                        sample_every=1)
    with trio.fail_after(60):
        entries = await compare(config, ["tickwire", "floor", "nosuch"])
    assert [e.server for e in entries] == ["tickwire", "floor", "nosuch"]
    tickwire, floor, nosuch = entries
    assert nosuch.report is None and nosuch.error is not None and "unknown server" in nosuch.error
    for entry in (tickwire, floor):
        report = entry.report
        assert report is not None and report.server is not None
        assert report.server_command is not None and report.connections == 2
        assert report.messages > 0 and report.server.events_per_s > 0
        assert report.latency.samples > 0
        assert report.compression_ratio == 1.0  # not offered: nothing compressed
    assert tickwire.report is not None and tickwire.report.server_command is not None
    assert tickwire.report.server_command[1:4] == ("-m", "feed", "serve")
    assert floor.report is not None and floor.report.server_command is not None
    assert floor.report.server_command[1:3] == ("-m", "benchmarks.floor")
    table = format_comparison(entries)
    assert table.splitlines()[0].split()[:3] == ["server", "msg/s", "per"]
    assert "tickwire / floor: messages/s " in table and "nosuch" in table
    assert tickwire.report.checked_connections == 1 and faults(tickwire.report.checks) == 0
    assert floor.report.checked_connections == 0  # prebuilt frames, not a book
    for report in (tickwire.report, floor.report):
        assert len(report.throughput) == 4  # 1 s window in 0.25 s steps
        assert all(rate > 0 for rate in report.throughput)
        assert report.latency.curve[0][0] == 0.0 and report.latency.curve[-1][0] > 99.0
    picture = tmp_path / "compare.png"
    plot([("tickwire", tickwire.report), ("floor", floor.report)], str(picture))
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 10_000
    data = orjson.loads(comparison_json(entries))
    assert [d["server"] for d in data] == ["tickwire", "floor", "nosuch"]
    assert data[0]["report"]["messages"] == tickwire.report.messages
    assert data[2]["report"] is None
    # benchmarks.matrix renders a directory of such comparisons as the docs' table
    (tmp_path / "c2-r500-off.json").write_bytes(comparison_json(entries))
    rows = matrix.table(tmp_path).splitlines()
    assert rows[0].startswith("| subscribers | events/s | deflate | server | msg/s |")
    cells = [row.strip("| ").split(" | ") for row in rows[2:]]
    assert [row[:4] for row in cells] == [["2", "500", "off", name]
                                         for name in ("tickwire", "floor", "nosuch")]
    assert cells[0][4] == f"{tickwire.report.messages_per_s:,.0f}"
    assert cells[2][4].startswith("not measured: ")


async def test_sigterm_stops_the_server_and_the_workers_it_started() -> None:
    command = [sys.executable, "-m", "clients.loadgen", "--spawn", "--synthetic 200 --symbols 2",
               "--connections", "2", "--workers", "1", "--duration", "60", "--warmup", "0"]
    process = await trio.lowlevel.open_process(command, stdout=subprocess.DEVNULL,
                                               stderr=subprocess.PIPE)
    assert process.stderr is not None
    stderr = b""
    try:
        with trio.fail_after(30):
            while b"connections subscribed" not in stderr:
                data = await process.stderr.receive_some(65536)
                assert data, stderr
                stderr += data
        # the server and the worker, and multiprocessing's resource tracker
        started = children(process.pid)
        assert len(started) == 3
        pidfds = [os.pidfd_open(pid) for pid in started]
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            await process.wait()
            stderr += await process.stderr.receive_some(65536)
            for pidfd in pidfds:  # readable once the process has ended
                await trio.lowlevel.wait_readable(pidfd)
                os.close(pidfd)
        assert process.returncode == 1 and b"loadgen: interrupted" in stderr
        assert b"tickwire started (pid " in stderr
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def book_msg(kind: str, seq: int, prev: int | None = None, bids: Any = (("100", "1"),),
             checksum: int | None = None, reason: str = "subscribe",
             symbol: str = "BTC") -> dict[str, Any]:
    message: dict[str, Any] = {"type": kind, "symbol": symbol, "seq": seq,
                               "bids": [list(b) for b in bids], "asks": [["101", "1"]],
                               "checksum": checksum, "ts_event": 1, "ts_recv": 1,
                               "ts_send": 1}
    if kind == "book_snapshot":
        message.update(depth=10, reason=reason)
    else:
        message["prev_seq"] = prev
    return message


def test_the_checker_finds_each_fault_once() -> None:
    checker = Checker()
    checker.check(book_msg("book_snapshot", 10))
    checker.check(book_msg("book_update", 11, 10, bids=[("100", "2")]))
    assert faults(checker.counts) == 0
    checker.check(book_msg("book_update", 13, 12))  # 12 is missing
    checker.check(book_msg("book_update", 14, 13))  # not checked again until a snapshot
    assert checker.counts["chain_breaks"] == 1
    checker.check(book_msg("book_snapshot", 20, reason="lag"))
    checker.check(book_msg("book_update", 21, 20, checksum=12345))  # wrong checksum
    assert checker.counts["checksum_mismatches"] == 1 and checker.counts["snapshots_lag"] == 1
    checker.check(book_msg("book_update", 5, 3, symbol="ETH"))  # no snapshot for ETH
    assert checker.counts["chain_breaks"] == 2
    for seq in (1, 2, 4):
        checker.check({"type": "trade", "symbol": "BTC", "seq": seq})
    for seq in (7, 9, 9):
        checker.check({"type": "bbo", "symbol": "BTC", "seq": seq})
    checker.check({"type": "notice", "code": "gap", "symbol": "BTC"})
    checker.check({"type": "book_update", "symbol": "BTC"})  # fields missing
    assert (checker.counts["trade_seq_gaps"], checker.counts["bbo_seq_regressions"],
            checker.counts["gaps"], checker.counts["bad_messages"]) == (1, 1, 1, 1)
    assert faults(checker.counts) == 6
