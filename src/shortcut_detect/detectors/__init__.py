"""Detectors: embedding-based shortcut tests and heatmap-based ones, one interface."""
