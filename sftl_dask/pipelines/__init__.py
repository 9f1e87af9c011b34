"""Pipelines: verbs chained into resumable jobs (``demo``, ``archive``) and the cached steps they share."""
