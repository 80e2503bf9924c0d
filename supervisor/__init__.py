"""Helpers that run inside circusd (hooks) or start a node (tests, benchmarks)."""
