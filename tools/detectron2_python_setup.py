"""Setup script that tools/install.sh drops into the pb1-detectron2 0.6 sdist in place of its own.

The sdist holds the upstream v0.6 Python sources without `detectron2/layers/csrc`, so its setup.py
cannot build `detectron2._C`. This installs the same Python packages (and the projects upstream
installs under `detectron2.projects`) with no extension; `detnas_d2.compat` covers the missing ops.
Dependencies are installed by detnas-d2's own setup.py.
"""

from setuptools import find_packages, setup

PROJECTS = {
    "detectron2.projects.point_rend": "projects/PointRend/point_rend",
    "detectron2.projects.deeplab": "projects/DeepLab/deeplab",
    "detectron2.projects.panoptic_deeplab": "projects/Panoptic-DeepLab/panoptic_deeplab",
}

setup(
    name="pb1-detectron2",
    version="0.6",
    description="Detectron2 v0.6 Python sources (no compiled ops), installed by detnas-d2",
    packages=find_packages(exclude=("configs", "tests*")) + list(PROJECTS),
    package_dir=PROJECTS,
    python_requires=">=3.6",
)
