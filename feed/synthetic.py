"""A synthetic market for load runs (``tickwire serve --synthetic RATE --symbols N``).

``SyntheticMarket`` is pure: no trio, no socket, no clock. The caller paces it and hands
in the timestamp of every event. Given a seed it produces the same stream every time.

Each symbol has its own tick and lot size and an L2 book of about ``levels`` levels per
side. Prices are integer tick counts and sizes integer lot counts inside; they become
canonical decimal strings only on the way out (cached, so each distinct price or size is
formatted once). The book is never crossed and never has an empty side.

The stream (each event's symbol chosen uniformly at random):

* about 12% of events are a ``Trade`` at the best price of the side it hits, and the next
  event is then always the ``BookDelta`` that reduces or removes the level it hit;
* about 7% walk the mid by half a tick or a tick (a new best level inside the spread,
  after pulling the opposite best level if the spread is one tick), mean-reverting so
  prices stay in a band of a few percent;
* the rest are ``BookDelta`` churn touching 1-3 levels, biased toward the top of the
  book: size changes, new levels (some inside the spread), cancels, and pruning of the
  deepest level.

A side is stored as ``dict[key, lots]`` where the key grows away from the top of the book
(``key = tick`` for asks, ``key = -tick`` for bids), so one code path serves both sides:
the best level is the smallest key, the deepest the largest, and a key ``k`` on one side
does not cross the other side exactly when ``k > -other.best``.
"""

from __future__ import annotations

import random

from feed.events import BookDelta, BookSnapshot, Level, Side, Trade

# (name, mid price, tick size, lot size, typical level size): stable, in this order.
_INSTRUMENTS: tuple[tuple[str, str, str, str, str], ...] = (
    ("SYN-BTC", "60000", "0.5", "0.001", "0.25"),
    ("SYN-ETH", "3000", "0.01", "0.0001", "2"),
    ("SYN-SOL", "150", "0.01", "0.01", "40"),
    ("SYN-XRP", "0.5", "0.0001", "1", "5000"),
    ("SYN-BNB", "580", "0.05", "0.001", "5"),
    ("SYN-DOGE", "0.12", "0.00001", "1", "20000"),
    ("SYN-ADA", "0.45", "0.0001", "0.1", "3000"),
    ("SYN-LINK", "14", "0.001", "0.01", "150"),
    ("SYN-AVAX", "30", "0.01", "0.01", "60"),
    ("SYN-DOT", "6", "0.001", "0.01", "300"),
    ("SYN-LTC", "80", "0.01", "0.001", "30"),
    ("SYN-TRX", "0.12", "0.00001", "0.1", "50000"),
)

TRADE_SHARE = 0.14
"""Share of draws that are trades; each trade adds its settling delta, so trades are
``0.14 / 1.14``, about 12%, of all events."""
WALK_SHARE = 0.08
"""Share of draws that walk the mid (about 7% of all events)."""
ONE_LEVEL_SHARE = 0.6
TWO_LEVELS_SHARE = 0.3
"""Shares of churn deltas touching one and two levels; the rest touch three."""
_CHURN = TRADE_SHARE + WALK_SHARE
_ONE = _CHURN + (1 - _CHURN) * ONE_LEVEL_SHARE
_TWO = _ONE + (1 - _CHURN) * TWO_LEVELS_SHARE
_TABLE_BITS = 12
_TABLE_MASK = (1 << _TABLE_BITS) - 1
_SIZE_CACHE = 3 * (1 << _TABLE_BITS)
_PRICE_CACHE = 1 << 14
"""Prices kept per instrument: a book spans a few thousand ticks, the walk drifts."""


def symbol_names(count: int) -> tuple[str, ...]:
    """The stable names of the first ``count`` synthetic symbols.

    ``SYN-BTC``, ``SYN-ETH``, ... and, past the instrument table, ``SYN-BTC-1``,
    ``SYN-ETH-1``, ... The names do not depend on the seed.
    """
    names = []
    for i in range(count):
        base = _INSTRUMENTS[i % len(_INSTRUMENTS)][0]
        rnd = i // len(_INSTRUMENTS)
        names.append(base if rnd == 0 else f"{base}-{rnd}")
    return tuple(names)


def _units(text: str) -> tuple[int, int]:
    """``"0.05"`` -> ``(5, 2)``: the integer and the count of decimals of a plain decimal."""
    whole, _, frac = text.partition(".")
    return int(whole + frac), len(frac)


def _format(units: int, decimals: int) -> str:
    """Canonical spelling of ``units * 10**-decimals`` (``units >= 0``)."""
    text = str(units)
    if decimals == 0:
        return text
    text = text.rjust(decimals + 1, "0")
    whole, frac = text[:-decimals], text[-decimals:].rstrip("0")
    return f"{whole}.{frac}" if frac else whole


class _Instrument:
    """One row of the instrument table, parsed, with what every book of that instrument
    shares: its random level sizes and its string caches (prices keyed by tick count,
    sizes by lot count)."""

    __slots__ = (
        "mid_ticks",
        "tick_unit",
        "price_decimals",
        "lot_unit",
        "lot_decimals",
        "lot_table",
        "prices",
        "sizes",
    )

    def __init__(
        self, spec: tuple[str, str, str, str, str], depth: int, factors: list[int]
    ) -> None:
        _, mid_text, tick_text, lot_text, typical_text = spec
        tick_unit, tick_decimals = _units(tick_text)
        mid_unit, mid_decimals = _units(mid_text)
        self.price_decimals = max(tick_decimals, mid_decimals)
        self.tick_unit = tick_unit * 10 ** (self.price_decimals - tick_decimals)
        mid_ticks = mid_unit * 10 ** (self.price_decimals - mid_decimals) // self.tick_unit
        # Keep the walk band (and the book below it) well above zero.
        while mid_ticks < 10 * depth:
            mid_ticks *= 10
        self.mid_ticks = mid_ticks
        self.lot_unit, self.lot_decimals = _units(lot_text)
        typical_unit, typical_decimals = _units(typical_text)
        common = max(typical_decimals, self.lot_decimals)
        typical_lots = (
            typical_unit
            * 10 ** (common - typical_decimals)
            // (self.lot_unit * 10 ** (common - self.lot_decimals))
        )
        # Level sizes in lots: the typical size scaled by the market's random factors.
        self.lot_table = [(typical_lots * factor >> 10) or 1 for factor in factors]
        self.prices: dict[int, str] = {}
        self.sizes: dict[int, str] = {0: "0"}

    def price(self, tick: int) -> str:
        """The canonical price of ``tick`` ticks (cached; the walk keeps reaching new
        prices, so the cache starts again when it is full)."""
        text = self.prices.get(tick)
        if text is None:
            if len(self.prices) >= _PRICE_CACHE:
                self.prices.clear()
            text = self.prices[tick] = _format(tick * self.tick_unit, self.price_decimals)
        return text

    def size(self, lots: int) -> str:
        """The canonical size of ``lots`` lots (0 lots is ``"0"``), cached until the
        cache is full: what is left of a level after a trade can be any count of lots."""
        text = self.sizes.get(lots)
        if text is None:
            text = _format(lots * self.lot_unit, self.lot_decimals)
            if len(self.sizes) < _SIZE_CACHE:
                self.sizes[lots] = text
        return text


class _Side:
    """One side of a book: ``key -> lots`` plus the best and deepest keys."""

    __slots__ = ("levels", "best", "worst", "sign", "max_key")

    def __init__(self, sign: int) -> None:
        self.levels: dict[int, int] = {}
        self.best = 0
        self.worst = 0
        self.sign = sign
        # Bids must stay above zero: key -1 is tick 1.
        self.max_key = -1 if sign < 0 else 1 << 62

    def put(self, key: int, lots: int) -> None:
        """Set the level at ``key`` to ``lots`` (> 0); the caller keeps it uncrossed."""
        levels = self.levels
        if not levels:
            self.best = self.worst = key
        elif key < self.best:
            self.best = key
        elif key > self.worst:
            self.worst = key
        levels[key] = lots

    def remove(self, key: int) -> None:
        """Remove the level at ``key``; the caller never removes the last level."""
        levels = self.levels
        del levels[key]
        if key == self.best:
            k = key + 1
            while k not in levels:
                k += 1
            self.best = k
        elif key == self.worst:
            k = key - 1
            while k not in levels:
                k -= 1
            self.worst = k

    def pick(self, offset: int) -> int:
        """The first existing key at least ``offset`` away from the best."""
        k = self.best + offset
        if k >= self.worst:
            return self.worst
        levels = self.levels
        while k not in levels:
            k += 1
        return k


class _Book:
    """One symbol: both sides, its instrument and its trade counter."""

    __slots__ = (
        "symbol",
        "instrument",
        "bids",
        "asks",
        "center",
        "band",
        "lot_table",
        "trade_id",
    )

    def __init__(
        self,
        symbol: str,
        instrument: _Instrument,
        levels: int,
        depth: int,
        rng: random.Random,
    ) -> None:
        mid_ticks = instrument.mid_ticks * rng.randint(950, 1050) // 1000
        self.symbol = symbol
        self.instrument = instrument
        self.bids = _Side(-1)
        self.asks = _Side(1)
        self.center = 2 * mid_ticks
        self.band = max(mid_ticks // 25, 2 * depth)
        self.lot_table = table = instrument.lot_table
        self.trade_id = 0
        for side, top in ((self.bids, -(mid_ticks - 1)), (self.asks, mid_ticks + 1)):
            key = top
            while len(side.levels) < levels:
                if rng.random() < 0.75 and key <= side.max_key:
                    side.put(key, table[rng.getrandbits(_TABLE_BITS)])
                key += 1

    def out(self, side: _Side, changes: dict[int, int]) -> tuple[Level, ...]:
        """``key -> lots`` changes of ``side`` as canonical levels (0 lots is ``"0"``)."""
        sign = side.sign
        instrument = self.instrument
        prices, sizes = instrument.prices, instrument.sizes
        try:  # the caches almost always hold both strings
            if len(changes) == 1:
                for k, n in changes.items():
                    return ((prices[k * sign], sizes[n]),)
            return tuple([(prices[k * sign], sizes[n]) for k, n in changes.items()])
        except KeyError:
            return tuple(
                [(instrument.price(k * sign), instrument.size(n)) for k, n in changes.items()]
            )

    def levels(self, side: _Side) -> tuple[Level, ...]:
        """The side as canonical levels, best first."""
        levels = side.levels
        return self.out(side, {k: levels[k] for k in sorted(levels)})


class SyntheticMarket:
    """A deterministic random-walk L2 market over ``symbols`` instruments.

    ``snapshots`` gives the full books; ``next_event`` the next change, stamped with the
    caller's ``ts_ns`` (``ts_event == ts_recv``; ``seq`` is ``None``). Applying the
    events in order to the snapshots reproduces ``book``.
    """

    def __init__(self, symbols: int, *, seed: int = 0, levels: int = 50) -> None:
        """Build the books; raises ``ValueError`` unless ``symbols >= 1`` and ``levels >= 1``."""
        if symbols < 1:
            raise ValueError(f"need at least one symbol, got {symbols}")
        if levels < 1:
            raise ValueError(f"need at least one level per side, got {levels}")
        rng = random.Random(seed)
        self._random = rng.random
        self._getrandbits = rng.getrandbits
        self.symbols: tuple[str, ...] = symbol_names(symbols)
        self._levels = levels
        self._floor = max(1, levels // 4)
        self._ceiling = levels + max(2, levels // 10)
        self._depth = depth = max(2 * levels, levels + 10)
        half = 1 << (_TABLE_BITS - 1)
        # Distance from the best for churn: half near the top, half spread over the depth.
        offsets = [min(int(rng.expovariate(0.6)), depth) for _ in range(half)]
        offsets += [min(int(rng.expovariate(2.0 / levels)), depth) for _ in range(half)]
        rng.shuffle(offsets)
        self._offsets = offsets
        # Level sizes relative to an instrument's typical size, in 1/1024ths (lognormal).
        factors = [int(1024 * rng.lognormvariate(0.0, 0.9)) for _ in range(1 << _TABLE_BITS)]
        instruments = [_Instrument(spec, depth, factors) for spec in _INSTRUMENTS[:symbols]]
        self._books = [
            _Book(name, instruments[i % len(instruments)], levels, depth, rng)
            for i, name in enumerate(self.symbols)
        ]
        self._count = len(self._books)
        self._by_symbol = {book.symbol: book for book in self._books}
        self._pending: tuple[_Book, _Side, int, int] | None = None

    def increments(self, symbol: str) -> tuple[str, str]:
        """``(tick size, lot size)`` of ``symbol`` as canonical strings; raises ``KeyError``.

        Every price is a multiple of the tick and every size a multiple of the lot.
        """
        instrument = self._by_symbol[symbol].instrument
        return (
            _format(instrument.tick_unit, instrument.price_decimals),
            _format(instrument.lot_unit, instrument.lot_decimals),
        )

    def book(self, symbol: str) -> tuple[tuple[Level, ...], tuple[Level, ...]]:
        """The current ``(bids, asks)`` of ``symbol``, best first; raises ``KeyError``."""
        book = self._by_symbol[symbol]
        return book.levels(book.bids), book.levels(book.asks)

    def snapshots(self, ts_ns: int) -> list[BookSnapshot]:
        """A full-book snapshot of every symbol, in ``symbols`` order."""
        return [
            BookSnapshot(book.symbol, book.levels(book.bids), book.levels(book.asks), ts_ns, ts_ns)
            for book in self._books
        ]

    def next_event(self, ts_ns: int) -> BookDelta | Trade:
        """The next event of the stream, stamped ``ts_ns``."""
        pending = self._pending
        if pending is not None:
            self._pending = None
            return self._settle(pending, ts_ns)
        # One draw picks the symbol (integer part) and the kind of event (fraction).
        x = self._random() * self._count
        i = int(x)
        book = self._books[i]
        u = x - i
        if u >= _CHURN:
            return self._churn(book, ts_ns, 1 if u < _ONE else 2 if u < _TWO else 3)
        if u < TRADE_SHARE:
            trade = self._trade(book, ts_ns)
            if trade is not None:
                return trade
            return self._churn(book, ts_ns, 1)
        return self._walk(book, ts_ns)

    # -- event kinds ------------------------------------------------------------------

    def _lots(self, book: _Book) -> int:
        """A random level size for ``book``, in lots (at least one)."""
        return book.lot_table[self._getrandbits(_TABLE_BITS)]

    def _trade(self, book: _Book, ts_ns: int) -> Trade | None:
        """A trade against the best level of a random side, or ``None`` when the hit
        side could lose its only level. Queues the delta that settles it."""
        buy = self._random() < 0.5
        side = book.asks if buy else book.bids
        key = side.best
        lots = side.levels[key]
        if lots == 1 and len(side.levels) == 1:
            return None
        if len(side.levels) > 1 and (lots == 1 or self._random() < 0.3):
            traded = lots
        else:
            f = self._random()
            traded = 1 + int(f * f * (lots - 1))
        self._pending = (book, side, key, lots - traded)
        book.trade_id += 1
        aggressor: Side = "buy" if buy else "sell"
        instrument = book.instrument
        return Trade(
            book.symbol,
            book.trade_id,
            instrument.price(key * side.sign),
            instrument.size(traded),
            aggressor,
            ts_ns,
            ts_ns,
        )

    def _settle(self, pending: tuple[_Book, _Side, int, int], ts_ns: int) -> BookDelta:
        """The delta after a trade: the hit level reduced to what is left, or removed."""
        book, side, key, lots = pending
        if lots:
            side.put(key, lots)
        else:
            side.remove(key)
        levels = book.out(side, {key: lots})
        if side is book.bids:
            return BookDelta(book.symbol, levels, (), ts_ns, ts_ns)
        return BookDelta(book.symbol, (), levels, ts_ns, ts_ns)

    def _walk(self, book: _Book, ts_ns: int) -> BookDelta:
        """Move the mid by one step, up or down, pulled back toward the book's center:
        a new best level inside the spread, after pulling the opposite best level when
        the spread is one tick."""
        bids, asks = book.bids, book.asks
        mid2 = asks.best - bids.best  # bid tick + ask tick
        pull = (mid2 - book.center) / (2 * book.band)
        pull = -1.0 if pull < -1.0 else 1.0 if pull > 1.0 else pull
        if self._random() < 0.5 - 0.45 * pull:
            gain, lose = bids, asks
        else:
            gain, lose = asks, bids
        gained: dict[int, int] = {}
        lost: dict[int, int] = {}
        if gain.best + lose.best == 1 and len(lose.levels) > 1:  # one-tick spread
            lost[lose.best] = 0
            lose.remove(lose.best)
        key = gain.best - 1
        if key > -lose.best and key <= gain.max_key:
            gained[key] = lots = self._lots(book)
            gain.put(key, lots)
        if not gained and not lost:  # nowhere to go
            return self._churn(book, ts_ns, 1)
        if gain is bids:
            return BookDelta(
                book.symbol, book.out(bids, gained), book.out(asks, lost), ts_ns, ts_ns
            )
        return BookDelta(book.symbol, book.out(bids, lost), book.out(asks, gained), ts_ns, ts_ns)

    def _churn(self, book: _Book, ts_ns: int, changes: int) -> BookDelta:
        """Change up to ``changes`` levels (at least one), mostly near the top: size
        changes, new levels, cancels, and pruning of the deepest level when a side grows
        too long or too deep. No level changes twice in one delta."""
        bits = self._getrandbits
        offsets = self._offsets
        lot_table = book.lot_table
        floor, target, ceiling, depth = self._floor, self._levels, self._ceiling, self._depth
        instrument = book.instrument
        prices, sizes = instrument.prices, instrument.sizes
        bids, asks = book.bids, book.asks
        bid_out: list[Level] = []
        ask_out: list[Level] = []
        touched: list[int] = []  # bid keys are negative, ask keys positive
        for _ in range(changes):
            # One draw: side (1 bit), offset (12), size (12), action (5, in 32nds).
            r = bits(30)
            if r & 1:
                side, other, out = bids, asks, bid_out
            else:
                side, other, out = asks, bids, ask_out
            levels = side.levels
            count = len(levels)
            if count > 1 and (count > ceiling or side.worst - side.best > depth):
                key = side.worst  # prune the deepest level
                lots = 0
            else:
                action = r >> 25
                offset = offsets[(r >> 1) & _TABLE_MASK]
                if action < (11 if count < target else 3 if count > target else 7):  # add
                    key = side.best - 1 + offset
                    lowest = 1 - other.best
                    if key < lowest:
                        key = lowest
                    if key > side.max_key:
                        key = side.best
                    lots = 1
                else:
                    key = side.pick(offset)
                    lots = 0 if action < 14 and count > floor else 1  # cancel or resize
            if key in touched:
                continue
            touched.append(key)
            if lots:
                lots = lot_table[(r >> 13) & _TABLE_MASK]
                old = levels.get(key)
                if old is None:
                    side.put(key, lots)
                else:  # a size change: the best and deepest keys stay
                    if old == lots:
                        lots += 1
                    levels[key] = lots
            else:
                side.remove(key)
            tick = key * side.sign
            out.append(
                (
                    prices.get(tick) or instrument.price(tick),
                    sizes.get(lots) or instrument.size(lots),
                )
            )
        return BookDelta(book.symbol, tuple(bid_out), tuple(ask_out), ts_ns, ts_ns)
