"""The Kinesis source: shards owned by DynamoDB leases, read with GetRecords."""
