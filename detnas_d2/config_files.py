"""The project's config files (configs/**/*.yaml, configs/archs included), found from any folder.

setup.py links (or copies) the checkout's configs/ into the package as detnas_d2/configs, which an install
ships as package data, as Detectron2's model_zoo ships its configs; so "configs/Toy/det_subnet.yaml" names
the same file from a checkout, from another folder, and from a non-editable install.
"""

import os

__all__ = ["PACKAGED_CONFIGS", "config_file"]

PACKAGED_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def config_file(path: str) -> str:
    """`path` as given where it exists; else the package's copy of that config, with or without the
    leading "configs/" (e.g. "configs/Toy/det_subnet.yaml" or "Toy/det_subnet.yaml"). "" (none) stays."""
    if not path or os.path.exists(path):
        return path
    relative = os.path.normpath(path)
    if relative.startswith("configs" + os.sep):
        relative = relative[len("configs" + os.sep) :]
    packaged = os.path.join(PACKAGED_CONFIGS, relative)
    if not os.path.isabs(path) and os.path.exists(packaged):
        return packaged
    raise FileNotFoundError(
        f"config {path} not found: neither a file (from {os.getcwd()}) nor one of the package's configs in "
        f"{PACKAGED_CONFIGS} (install the package with pip from a checkout: setup.py puts configs/ there)"
    )
