"""Running the worker: composition, lifecycle, assignments, backpressure, commits, tasks."""
