"""HematoVision benchmarks: the worker pipeline against the raw model, and CPU engines.

    .venv/bin/python -m bench --json var/bench.json

See bench/README.md for what each figure means and the figures of the last run.
"""
