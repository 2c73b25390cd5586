"""The model zoo, students built from teachers, taps, ensembles, Hugging Face causal LMs and encoders."""
