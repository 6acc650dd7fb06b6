"""``tickwire subscribe``: watch books, trades or BBOs live in a terminal.

``run_subscribe(url, symbols, channel, depth)`` runs a ``BookKeeper`` (so the view
resyncs and reconnects by itself) and shows what it receives:

- on a terminal: a screen redrawn in place at most ``1 / refresh_interval`` times a
  second (10 by default): per symbol the top-of-book ladder (or the BBO) and, for the
  ``book`` channel, the last trades (it also subscribes ``trades``), then the counters;
- otherwise (a pipe, a file): one plain line per message (``clients.view.format_line``).

``main(url, symbols, channel, depth)`` wraps it for a command line (no argparse here):
it returns the process exit status, 0 after Ctrl-C, 1 after an error.
"""

from __future__ import annotations

import math
import ssl
import sys
from collections import deque
from collections.abc import Sequence
from functools import partial
from typing import Any, TextIO

import trio

from clients.errors import ClientError
from clients.keeper import BookKeeper
from clients.messages import Message, Trade, parse_message
from clients.view import (
    ENTER,
    LEAVE,
    format_line,
    render_bbo,
    render_ladder,
    render_screen,
    render_status,
    render_trades,
)

DEFAULT_URL = "ws://127.0.0.1:8765/v1/stream"
REFRESH_INTERVAL = 0.1
"""Seconds between two redraws at most (so at most 10 redraws a second)."""
LADDER_ROWS = 10
"""Ladder rows shown per symbol at most, whatever the subscription depth."""
TRADES_SHOWN = 5
BUFFER = 1000
"""Messages the keeper may run ahead of the screen."""


class _Screen:
    """What the terminal view shows besides the books the keeper holds."""

    def __init__(self, keeper: BookKeeper, symbols: Sequence[str], channel: str, depth: int):
        self.keeper = keeper
        self.symbols = list(symbols)
        self.channel = channel
        self.rows = min(depth, LADDER_ROWS)
        self.trades: dict[str, deque[Trade]] = {s: deque(maxlen=TRADES_SHOWN) for s in symbols}
        self.bbos: dict[str, Message] = {}
        self.note = ""

    def take(self, msg: Message) -> None:
        """Remember what a message changes on screen (books are the keeper's)."""
        kind = msg.get("type")
        if kind == "trade":
            trade = parse_message(msg)
            if isinstance(trade, Trade) and trade.symbol in self.trades:
                self.trades[trade.symbol].append(trade)
        elif kind == "bbo":
            self.bbos[str(msg.get("symbol"))] = msg
        elif kind in ("error", "notice"):
            self.note = format_line(msg) or ""

    def render(self, color: bool) -> str:
        """The whole screen as a string of text and ANSI codes."""
        blocks: list[list[str]] = []
        for symbol in self.symbols:
            block: list[str] = []
            book = self.keeper.session.books.get(symbol)
            if self.channel == "book" and book is not None:
                block += render_ladder(book, self.rows, color=color)
            elif self.channel == "bbo":
                block += render_bbo(symbol, self.bbos.get(symbol), color=color)
            if self.channel in ("book", "trades"):
                block.append(f"{symbol} last trades" if self.channel == "book" else symbol)
                block += render_trades(list(self.trades[symbol]), color=color)
            blocks.append(block)
        status = render_status(self.keeper.statistics(), self.keeper.connected, self.note)
        return render_screen(blocks, status)


async def run_subscribe(
    url: str,
    symbols: Sequence[str],
    channel: str = "book",
    depth: int = 10,
    *,
    out: TextIO | None = None,
    tty: bool | None = None,
    color: bool | None = None,
    refresh_interval: float = REFRESH_INTERVAL,
    keeper: BookKeeper | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Subscribe ``symbols`` on ``channel`` and show them on ``out`` (stdout) until
    cancelled.

    ``tty`` (default: ``out.isatty()``) picks the redrawn screen over plain lines;
    ``color`` defaults to ``tty``. ``keeper`` may be given ready-made (tests inject one
    with an in-memory stream opener). ``ssl_context`` is for a ``wss://`` URL (default:
    the system's trusted CAs). Raises ``ValueError`` for an unknown channel or no
    symbols, and what ``BookKeeper.run`` raises when it gives up; a single exception is
    raised as itself, not inside an exception group (``KeyboardInterrupt`` included).
    """
    stream = out if out is not None else sys.stdout
    is_tty = stream.isatty() if tty is None else tty
    keeper = keeper or BookKeeper(url, ssl_context=ssl_context)
    options: dict[str, Any] = {"depth": depth} if channel == "book" else {}
    await keeper.subscribe(channel, symbols, **options)
    if channel == "book" and is_tty:
        await keeper.subscribe("trades", symbols)
    send, receive = trio.open_memory_channel[Message](BUFFER)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keeper.run, send)
            async with receive:
                if is_tty:
                    screen = _Screen(keeper, symbols, channel, depth)
                    paint = is_tty if color is None else color
                    await _draw_screen(receive, screen, stream, paint, refresh_interval)
                else:
                    await _print_lines(receive, stream)
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # One failure (the keeper giving up, or Ctrl-C) comes out as itself, so that a
        # caller's `except KeyboardInterrupt` / `except ConnectionClosed` works.
        leaves = _leaves(group)
        if len(leaves) == 1:
            raise leaves[0] from leaves[0].__cause__  # its own cause, not the group
        raise


async def _print_lines(receive: trio.MemoryReceiveChannel[Message], out: TextIO) -> None:
    async for msg in receive:
        line = format_line(msg)
        if line is not None:
            out.write(line + "\n")
            out.flush()


async def _draw_screen(
    receive: trio.MemoryReceiveChannel[Message],
    screen: _Screen,
    out: TextIO,
    color: bool,
    interval: float,
) -> None:
    """Take messages as they come; redraw when something changed and the last redraw
    is at least ``interval`` old (waiting for that moment if need be)."""
    out.write(ENTER)
    try:
        last_draw = -math.inf
        dirty = True
        while True:
            with trio.move_on_at(last_draw + interval if dirty else math.inf):
                try:
                    msg = await receive.receive()
                except trio.EndOfChannel:
                    return
                screen.take(msg)
                dirty = True
            now = trio.current_time()
            if dirty and now >= last_draw + interval:
                out.write(screen.render(color))
                out.flush()
                last_draw = now
                dirty = False
    finally:
        out.write(LEAVE)
        out.flush()


def main(
    url: str = DEFAULT_URL,
    symbols: Sequence[str] = (),
    channel: str = "book",
    depth: int = 10,
) -> int:
    """Run the view until Ctrl-C; return the exit status (errors go to stderr)."""
    status = 0
    try:
        trio.run(partial(run_subscribe, url, symbols, channel, depth))
    except* KeyboardInterrupt:
        pass
    except* (ClientError, ValueError, OSError) as group:
        for exc in _leaves(group):
            print(f"tickwire subscribe: {exc}", file=sys.stderr)
        status = 1
    return status


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return leaves
