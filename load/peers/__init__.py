"""Peer libraries measured by the benchmark, each run with its own virtualenv's Python."""
