"""licbench: a reproducible pipeline for learned lossy image compression research."""

__version__ = "0.1.0"
