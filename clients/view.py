"""Text rendering for the terminal view of ``tickwire subscribe`` (pure: strings only).

Two outputs:

- ``render_screen``: a full screen for a terminal: per symbol a ladder of the top
  levels (bid size, bid, ask, ask size), or the best bid/offer for ``bbo``, and the last
  trades, then a status line with the keeper's counters. Plain ANSI escape codes:
  cursor home, erase to end of line and of screen, optional colours. Redrawing in place
  (``HOME`` ... ``CLEAR_BELOW``) avoids flicker; no curses.
- ``format_line``: one plain line per server message, for when stdout is not a terminal
  (pipes, logs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from clients.messages import Trade
from clients.session import SessionStatistics
from clients.subscription import BookSubscription

ENTER = "\x1b[?1049h\x1b[?25l"
"""Switch to the alternate screen and hide the cursor."""
LEAVE = "\x1b[?25h\x1b[?1049l"
"""Show the cursor and return to the normal screen."""
HOME = "\x1b[H"
CLEAR_LINE = "\x1b[K"
CLEAR_BELOW = "\x1b[J"
GREEN = "\x1b[32m"
RED = "\x1b[31m"
BOLD = "\x1b[1m"
DIM = "\x1b[2m"
RESET = "\x1b[0m"

_COL = 14


def _paint(text: str, style: str, color: bool) -> str:
    return f"{style}{text}{RESET}" if color and text.strip() else text


def format_ts(ts_ns: int) -> str:
    """``HH:MM:SS.mmm`` (UTC) of a nanosecond timestamp; ``-`` for 0."""
    if not ts_ns:
        return "-"
    moment = datetime.fromtimestamp(ts_ns / 1e9, tz=UTC)
    return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def render_ladder(sub: BookSubscription, depth: int, *, color: bool = False) -> list[str]:
    """A header and ``depth`` rows of bids and asks side by side, best first."""
    book = sub.book
    bids, asks = book.top(depth)
    header = f"{sub.symbol}  seq {book.seq if book.seq is not None else '-'}  {sub.state.value}"
    best_bid, best_ask = book.bbo()
    if best_bid is not None and best_ask is not None:
        header += f"  spread {Decimal(best_ask[0]) - Decimal(best_bid[0])}"
    lines = [_paint(header, BOLD, color)]
    lines.append(
        f"{'bid size':>{_COL}} {'bid':>{_COL}} | {'ask':<{_COL}} {'ask size':<{_COL}}"
    )
    for i in range(max(len(bids), len(asks))):
        bid_size, bid = (bids[i][1], bids[i][0]) if i < len(bids) else ("", "")
        ask, ask_size = asks[i] if i < len(asks) else ("", "")
        left = _paint(f"{bid_size:>{_COL}} {bid:>{_COL}}", GREEN, color)
        right = _paint(f"{ask:<{_COL}} {ask_size:<{_COL}}", RED, color)
        lines.append(f"{left} | {right}")
    if not bids and not asks:
        lines.append(_paint("  (empty book)", DIM, color))
    return lines


def render_bbo(symbol: str, bbo: Mapping[str, Any] | None, *, color: bool = False) -> list[str]:
    """One symbol's best bid and offer from its last ``bbo`` message."""
    if bbo is None:
        return [_paint(f"{symbol}  (waiting for bbo)", DIM, color)]
    bid = _level_text(bbo.get("bid"))
    ask = _level_text(bbo.get("ask"))
    return [
        _paint(f"{symbol}  seq {bbo.get('seq', '-')}", BOLD, color),
        f"  bid {_paint(bid, GREEN, color)}   ask {_paint(ask, RED, color)}",
    ]


def render_trades(trades: Sequence[Trade], *, color: bool = False) -> list[str]:
    """The given trades, newest first, one per line."""
    lines = []
    for trade in reversed(trades):
        style = GREEN if trade.side == "buy" else RED
        text = f"  {format_ts(trade.ts_event)}  {trade.side:<4} {trade.size:>12} @ {trade.price}"
        lines.append(_paint(text, style, color))
    return lines or [_paint("  (no trades yet)", DIM, color)]


def render_status(stats: SessionStatistics, connected: bool, note: str = "") -> str:
    """The status line: connection state and the keeper's counters."""
    state = "connected" if connected else "connecting"
    text = (
        f"{state}  msgs {stats.messages}  resyncs {stats.resyncs}"
        f"  reconnects {stats.reconnects}  chain breaks {stats.chain_breaks}"
        f"  checksum failures {stats.checksum_failures}  errors {stats.errors}"
    )
    return f"{text}  {note}" if note else text


def render_screen(blocks: Sequence[Sequence[str]], status: str) -> str:
    """A whole screen: ``blocks`` separated by blank lines, then ``status``; each line
    ends with erase-to-end-of-line and the screen with erase-below, drawn from home."""
    lines: list[str] = []
    for block in blocks:
        lines.extend(block)
        lines.append("")
    lines.append(status)
    return HOME + "".join(f"{line}{CLEAR_LINE}\n" for line in lines) + CLEAR_BELOW


def _level_text(level: object) -> str:
    if isinstance(level, list | tuple) and len(level) == 2:
        return f"{level[1]} @ {level[0]}"
    return "-"


def _levels_text(levels: object) -> str:
    if not isinstance(levels, list | tuple):
        return ""
    return " ".join(f"{lvl[0]}x{lvl[1]}" for lvl in levels if isinstance(lvl, list | tuple))


def format_line(msg: Mapping[str, Any]) -> str | None:
    """One plain line for a server message, or ``None`` for messages not worth a line
    (heartbeats, pongs)."""
    kind = msg.get("type")
    symbol = msg.get("symbol", "")
    if kind == "book_snapshot":
        return (
            f"{symbol} snapshot seq={msg.get('seq')} reason={msg.get('reason', '')}"
            f" bids {_levels_text(msg.get('bids'))} asks {_levels_text(msg.get('asks'))}"
        )
    if kind == "book_update":
        return (
            f"{symbol} update seq={msg.get('seq')} prev={msg.get('prev_seq')}"
            f" bids {_levels_text(msg.get('bids'))} asks {_levels_text(msg.get('asks'))}"
        )
    if kind == "trade":
        return (
            f"{symbol} trade seq={msg.get('seq')} {format_ts(int(msg.get('ts_event') or 0))}"
            f" {msg.get('side')} {msg.get('size')} @ {msg.get('price')}"
        )
    if kind == "bbo":
        return (
            f"{symbol} bbo seq={msg.get('seq')} bid {_level_text(msg.get('bid'))}"
            f" ask {_level_text(msg.get('ask'))}"
        )
    if kind in ("subscribed", "unsubscribed"):
        return f"{kind} {msg.get('channel')} {','.join(msg.get('symbols') or [])}"
    if kind in ("error", "notice"):
        where = f" {symbol}" if symbol else ""
        return f"{kind}{where} {msg.get('code')}: {msg.get('message', '')}"
    return None
