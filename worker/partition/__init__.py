"""One owned partition: its buffer, key lanes, offset tracker, and the steps its batches run."""
