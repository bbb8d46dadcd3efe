#!/usr/bin/env python
"""Convert DetNAS checkpoints between MMRazor's, the official DetNAS code's and detnas-d2's layouts.

The command line of detnas_d2.checkpoint.cli (`python tools/convert_checkpoint.py --help`)."""

import sys

from detnas_d2.checkpoint.cli import main

if __name__ == "__main__":
    sys.exit(main())
