#!/usr/bin/env python
"""Does the supernet rank archs as stand-alone training does? The command line of detnas_d2.audit
(`python tools/rank_audit.py --help`, `python tools/rank_audit.py <part> --help`)."""

import sys

from detnas_d2.audit.cli import main

if __name__ == "__main__":
    sys.exit(main())
