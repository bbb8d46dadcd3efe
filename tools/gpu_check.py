#!/usr/bin/env python
"""Acceptance check of one CUDA GPU, in at most 8 minutes (docs/gpu_check.md):

    python tools/gpu_check.py --output-dir output/gpu_check          # on the GPU machine
    python tools/gpu_check.py --device cpu --quick --output-dir /tmp/c  # the same code at tiny sizes

Writes gpu_check.json and gpu_check.md into --output-dir; exits 1 when a part failed.
"""

import sys

import detnas_d2  # noqa: F401  (compat shims, registrations)

from detnas_d2.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
