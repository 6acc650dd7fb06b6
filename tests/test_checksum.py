import zlib

from feed.checksum import book_checksum, checksum_text


def test_empty_book_checksum_is_zero() -> None:
    assert book_checksum([], [], 10) == 0


def test_interleaves_bids_and_asks_and_drops_missing_side() -> None:
    bids = [("100.5", "1"), ("100", "2"), ("99", "3")]
    asks = [("101", "4")]
    text = checksum_text(bids, asks, 10)
    assert text == "100.5:1:101:4:100:2:99:3"
    assert book_checksum(bids, asks, 10) == zlib.crc32(text.encode())


def test_covers_at_most_ten_levels_or_depth() -> None:
    bids = [(str(1000 - i), "1") for i in range(20)]
    asks = [(str(1001 + i), "1") for i in range(20)]
    assert checksum_text(bids, asks, 3).count(":") == 2 * 6 - 1
    assert checksum_text(bids, asks, 50) == checksum_text(bids[:10], asks[:10], 10)
