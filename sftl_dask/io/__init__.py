"""Readers and writers of real product formats (never imports the synthetic testbed)."""
