"""The jobs, each thin over the stack with its own config schema."""
