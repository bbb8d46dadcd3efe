"""detnas-d2: DetNAS backbone search as a Detectron2 project.

torch, torchvision and Detectron2 are not listed: like Detectron2 itself, we leave them to the
environment. `bash tools/install.sh` installs a working set (and keeps one that already works).
"""

import glob
import os
import shutil

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))

INSTALL_REQUIRES = [
    "fvcore>=0.1.5,<0.1.6",
    "iopath>=0.1.7,<0.1.10",
    "pycocotools>=2.0.2",
    "pyyaml>=5.1",
    "numpy",
    "Pillow>=7.1",
    "matplotlib",
    "tensorboard",
    "tqdm>4.29.0",
    "tabulate",
    "termcolor>=1.1",
    "yacs>=0.1.8",
    "cloudpickle",
    "omegaconf>=2.1",
    "hydra-core>=1.1",
    "packaging",
]
# ONNX export (tools/export_model.py --format onnx) and its check on onnxruntime (CPU). Literal lists:
# tools/check_env.py reads them with ast.literal_eval.
EXPORT_REQUIRES = ["onnx>=1.16,<2", "onnxruntime>=1.18,<2"]
# Launching trainings through submitit (tools/submit.py, detnas_d2/engine/submit.py).
SLURM_REQUIRES = ["submitit>=1.5"]
# ruff pinned: lint and format results change between versions (pyproject.toml, .ci/run).
TEST_REQUIRES = [
    "pytest>=7",
    "pytest-timeout",
    "pytest-xdist>=3",
    "onnx>=1.16,<2",
    "onnxruntime>=1.18,<2",
    "ruff==0.17.6",
    "submitit>=1.5",
]


def packaged_configs():
    """Link (where links fail: copy) configs/ into the package as detnas_d2/configs, as Detectron2's
    setup.py does for its model zoo, so that an install ships them and detnas_d2.config_files finds them
    from any folder; returns them (YAML configs, LazyConfig Python files) as package data."""
    source, destination = os.path.join(HERE, "configs"), os.path.join(HERE, "detnas_d2", "configs")
    if os.path.exists(source):  # a checkout (a source distribution holds the copy already)
        if os.path.islink(destination):
            os.unlink(destination)
        elif os.path.isdir(destination):
            shutil.rmtree(destination)
        try:
            os.symlink(source, destination)
        except OSError:
            shutil.copytree(source, destination)
    package = os.path.join(HERE, "detnas_d2")
    return [
        os.path.relpath(path, package)
        for pattern in ("*.yaml", "*.py")
        for path in glob.glob(os.path.join(destination, "**", pattern), recursive=True)
    ]


setup(
    name="detnas-d2",
    version="0.1.0",
    description="DetNAS (backbone search for object detection) for Detectron2",
    packages=find_packages(include=("detnas_d2", "detnas_d2.*")),
    package_data={"detnas_d2": packaged_configs()},
    python_requires=">=3.8",
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES, "export": EXPORT_REQUIRES, "slurm": SLURM_REQUIRES},
    entry_points={"console_scripts": ["detnas-arch-info=detnas_d2.arch_info:main"]},
)
