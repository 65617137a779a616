"""Example handlers for streamworker."""
