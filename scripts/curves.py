#!/usr/bin/env python3
"""Collects the training curves of every run of a grid into one CSV (for pandas or a
spreadsheet): GRID/curves.csv, one row per run and epoch, the run's grid axes as columns,
then its metrics.csv columns. Run folders (GRID/runs/) are not committed; curves.csv is.

    python3 scripts/curves.py results/demo
"""
import csv
import json
import sys
from pathlib import Path


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    grid = Path(sys.argv[1])
    runs = sorted(p for p in (grid / "runs").glob("*") if (p / "metrics.csv").is_file())
    if not runs:
        sys.exit(f"curves: no run with a metrics.csv under {grid / 'runs'}")
    rows, axes, metrics = [], [], []
    for run in runs:
        spec = run / "spec.json"
        try:
            a = json.loads(spec.read_text())["axes"]
        except (OSError, ValueError, KeyError) as e:
            sys.exit(f"curves: {spec}: cannot read the run's grid axes ({e})")
        axes += [k for k in a if k not in axes]
        with open(run / "metrics.csv", newline="") as f:
            reader = csv.DictReader(f)
            metrics += [k for k in reader.fieldnames or [] if k not in metrics]
            for r in reader:
                rows.append({"run": run.name, **a, **r})
    out = grid / "curves.csv"
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["run", *axes, *metrics], restval="")
        w.writeheader()
        w.writerows(rows)
    print(f"curves: {len(rows)} rows from {len(runs)} runs -> {out}")


if __name__ == "__main__":
    main()
