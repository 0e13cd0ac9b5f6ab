"""Datasets: sources, verified download or mirror copy, manifest, image loading."""
