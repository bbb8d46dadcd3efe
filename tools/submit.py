#!/usr/bin/env python
"""Submit a training step to SLURM (or run it locally) through submitit.

The command line of detnas_d2.submit_net (`python tools/submit.py --help`)."""

import sys

from detnas_d2.submit_net import main

if __name__ == "__main__":
    sys.exit(main())
