"""The run's ground: errors, atomic files, credentials, checkpoints, config loading and the run directory. Knows no ML."""
