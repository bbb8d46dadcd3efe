"""`python -m detnas_d2.latency ...`: the command line of detnas_d2/latency/cli.py."""

import sys

from .cli import main

sys.exit(main())
