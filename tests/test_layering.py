"""The sans-IO layers stay free of IO: pure modules import neither trio nor socket."""

import subprocess
import sys

import pytest

PURE = [
    "feed.events", "feed.decimals", "feed.checksum", "feed.book", "feed.views",
    "feed.outbox", "feed.protocol", "feed.wsframe", "feed.groups", "feed.hub",
    "feed.session", "feed.echo", "feed.config", "feed.synthetic", "feed.access", "feed.health",
    "clients.book", "clients.messages", "clients.subscription", "clients.session",
    "clients.codec", "clients.backoff", "clients.view", "clients.errors",
    "replay.codec", "replay.binance", "replay.window", "replay.cryptofeed", "replay.kraken",
    "replay.coinbase",
]


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_io(module: str) -> None:
    code = (f"import sys, {module}; "
            "bad = sorted(m for m in ('trio', 'socket', 'ssl', 'wsproto') if m in sys.modules); "
            "print(','.join(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "", f"{module} pulls in {result.stdout.strip()}"
