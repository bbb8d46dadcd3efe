"""Datasets: toy shapes generated on first use, ImageNet-layout folders (registered on import)."""

from . import datasets  # noqa: F401  (registers toy_* and imagenet_* in DatasetCatalog)
