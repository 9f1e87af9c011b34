"""Training: matchups, the three SFTL stages, the experiment grid, metrics and reports."""
