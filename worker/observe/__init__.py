"""Watching the worker: metrics, health and readiness, the commit watchdog, status, logs.

Observation reads a small read-only view of the worker (`view.WorkerView`)
and snapshots the parts publish; it never writes their state, and it never
reads Prometheus back (Prometheus is an output).
"""
