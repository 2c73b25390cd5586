"""The training engine: resume, fingerprint, NaN guard, DDP/FSDP, tracking and progress."""
