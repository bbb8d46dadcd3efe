"""Does the supernet rank archs as stand-alone training does? Score a set of archs both ways and compare
(tools/rank_audit.py is the command line; docs/ranking_audit.md).

- `archs`: arch sets (files or inline archs) and K archs sampled stratified over FLOPs;
- `scores`: the score files (JSON lines): reading, appending, one protocol per file, canonical order;
- `supernet`: supernet scores with the search's own scorer;
- `standalone`: stand-alone scores, pipeline steps 4-5 for each arch and seed, several at a time;
- `compare`: rank correlations, top-k precision and seed noise, as a report, JSON and a plot;
- `protocols`: a cheaper scoring protocol against a reference one;
- `claim`: the report of DetNAS's claim at small scale (tools/study.py);
- `formatting`: numbers in the reports' tables and strict JSON;
- `console`: the audit's messages, whole lines also from concurrent trainings;
- `cli`: the command line.
"""
