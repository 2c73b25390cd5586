"""Divergences, loss terms with their schemas, and the weighted sum a method trains on."""
