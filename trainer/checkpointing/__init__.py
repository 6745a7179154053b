"""Checkpoints: when they are written (checkpointer), what they hold (state), the file itself
(checkpoint: atomic writes, loading that runs no code), FSDP shards, and export."""
