"""Exports that load in their ecosystem's standard tools, with parity checks."""
