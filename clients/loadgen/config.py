"""``LoadConfig``: what one run does, checked before anything starts."""

from __future__ import annotations

import os
from dataclasses import dataclass

from clients.loadgen.errors import LoadError
from clients.loadgen.frames import DEFAULT_SAMPLE_EVERY

CHANNELS = ("book", "trades", "bbo")


@dataclass(frozen=True)
class LoadConfig:
    """One run. ``url`` or ``spawn`` (server arguments) names the server."""

    url: str | None = None
    spawn: str | None = None
    server: str = "tickwire"
    """With ``spawn``: which server to start (``clients.loadgen.spawn.SERVERS``)."""
    connections: int = 100
    duration: float = 10.0
    warmup: float = 2.0
    workers: int = 0
    """0: one per CPU, at most one per connection."""
    channel: str = "book"
    symbols: tuple[str, ...] | None = None
    """None: every symbol the server carries on the channel."""
    depth: int = 10
    compress: bool = True
    sample_every: int = DEFAULT_SAMPLE_EVERY
    setup_timeout: float = 30.0

    def check(self) -> None:
        """Raises ``LoadError`` naming the first bad setting."""
        if (self.url is None) == (self.spawn is None):
            raise LoadError("give --url or --spawn (one of them)")
        if self.connections < 1 or self.duration <= 0 or self.warmup < 0:
            raise LoadError("--connections >= 1, --duration > 0 and --warmup >= 0, please")
        if self.workers < 0 or self.sample_every < 1 or not 1 <= self.depth <= 1000:
            raise LoadError("--workers >= 0, --sample-every >= 1, --depth 1 to 1000, please")
        if self.channel not in CHANNELS:
            raise LoadError(f"--channel must be one of {', '.join(CHANNELS)}")

    def worker_count(self) -> int:
        return min(self.workers or os.cpu_count() or 2, self.connections)
