"""An OpenAI-compatible HTTP server for a causal LM."""
