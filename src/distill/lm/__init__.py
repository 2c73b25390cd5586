"""Causal language-model distillation: Hugging Face teachers and students, token-level losses,
an offline top-k teacher cache and on-policy rounds. Importing this package loads transformers."""
