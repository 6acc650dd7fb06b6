"""Peer servers that tickwire is benchmarked against (see benchmarks/README.md)."""
