"""The bench stage (bench.py) and its private helpers: timing, ceilings, baselines, rows, report, the preprocessing study."""
