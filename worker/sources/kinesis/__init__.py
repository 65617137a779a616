"""The Kinesis source: shards, KCL-style leases and checkpoints in DynamoDB."""
