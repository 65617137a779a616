"""The Kafka source (aiokafka), its record API, security settings and lag reader.

Kept import-light: `worker.config` imports `config` from here without pulling aiokafka in.
"""
