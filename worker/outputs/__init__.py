"""Outputs: records a native handler sends to Kafka topics with `batch.send`.

An output belongs to the invoke that queued it (`outbox`): a failed invoke's outputs
are discarded with it, a successful one's are kept by the partition (`ledger`) keyed
by the last input position of its batch, and go out only with the checkpoint that
covers that position (`sink`): at least once, acknowledged before the offsets are
committed; exactly once, in one Kafka transaction with them.
"""
