"""Record sources: Kafka, the in-memory log, and (later) Kinesis, behind one contract."""
