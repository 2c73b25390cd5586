"""Metrics, validation, benchmarks of speed and size, monitoring, diagnosis; `report` renders only."""
