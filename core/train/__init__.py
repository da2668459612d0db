"""The training loop, checkpoints, strategies' common base and the memory/throughput meter."""
