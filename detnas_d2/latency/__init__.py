"""Latency lookup tables: the measured time of every (layer, block choice) of a search space on one device.

The predicted latency of an arch is the table's sum: stem + the chosen block of every layer (+ the
classifier head when the table has one), as in FBNet/ChamNet's per-operator tables, calibrated by a line
fitted on whole backbones measured with the table (`scale * sum + offset`: the sum of isolated blocks
missed whole backbones by 5-10%). A table holds one device, input size, batch and width:
`LatencyTable.load(..., expect_device=..., expect_input_size=...)` refuses a table measured elsewhere.

    python -m detnas_d2.latency --space small --input-size 224x224 --device cpu --output lat_cpu_224.json
    python -m detnas_d2.latency --space small --width-mult 0.25 --input-size 32x32 --repeats 2 --output t.yaml

- `calibration`: the line through measured backbones against the table's sums, and why a line;
- `table`: `LatencyTable` (load, save, predict, per_stage, range_ms, calibrate) and its file format;
- `timing`: the timing harness (clocks, round-robin measuring, `build_table`, `validate_table`); how
  entries are timed is in its module doc. `--fit-archs F --validate N` times F + N random archs'
  end-to-end backbones in the same round-robin, calibrates the table on the first F and stores the mean
  and worst absolute % error on the other N, before and after the calibration;
  `--clock cpu` (one CPU thread) reads the thread's CPU time instead of wall time;
- `cli`: the command line above.

Search integration: `LatencyTable.load(path, expect_device="cuda", expect_input_size=(800, 1333))`,
then `table.predict(arch)` (ms) or `table.per_stage(arch)`. The package exports the table alone, so
that the search reads tables without loading the timing harness.
"""

from .table import TABLE_FORMAT, LatencyTable, LatencyTableMismatch

__all__ = ["TABLE_FORMAT", "LatencyTable", "LatencyTableMismatch"]
