#!/usr/bin/env python
"""Run the six DetNAS steps end to end (detnas_d2.run_pipeline; `--help` for the presets and options)."""

from detnas_d2.run_pipeline import main

if __name__ == "__main__":
    main()
