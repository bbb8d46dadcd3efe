#!/usr/bin/env python
"""Export a DetNAS model to TorchScript or ONNX, with a parity check against PyTorch.

The command line of detnas_d2.export.cli (`python tools/export_model.py --help`)."""

import sys

from detnas_d2.export.cli import main

if __name__ == "__main__":
    sys.exit(main())
