"""Datasets: canonical tables, readers, splits, content and training batches."""
