"""Training: the three SFTL stages as tasks (torch, tree) over typed configs, on prepared data; the experiment grid;
data-parallel pre-training. Never imports the testbed or the pipelines (docs/architecture.md)."""
