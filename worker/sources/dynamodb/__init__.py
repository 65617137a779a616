"""The DynamoDB Streams source: a table's changes, read as leased shards by the Kinesis
machinery."""
