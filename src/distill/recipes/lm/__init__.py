"""`distill lm`: token-level distillation of a causal language model."""
