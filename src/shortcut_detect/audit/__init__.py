"""Dataset audit: pipeline, incremental store, report."""
