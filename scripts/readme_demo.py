#!/usr/bin/env python3
"""Writes the README's demo block (between <!-- demo:start --> and <!-- demo:end -->) from
results/demo/ as `just demo` left it: the table from table.md, the comparisons from table.csv,
the wall time and machine from MADE.md. Every number in the block comes from those files.

    python3 scripts/readme_demo.py            # rewrite the block in README.md
    python3 scripts/readme_demo.py --check    # exit 1 if the block is out of date
"""
import csv
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "results" / "demo"
START, END = "<!-- demo:start -->", "<!-- demo:end -->"


def cells():
    with open(DEMO / "table.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {(r["method"], r["backbone"], r["fraction"]): r for r in rows}


def main_table():
    lines = (DEMO / "table.md").read_text().splitlines()
    out, started = [], False
    for line in lines:
        if line.startswith("| method"):
            started = True
        if started:
            if not line.startswith("|"):
                break
            out.append(line)
    return "\n".join(out)


def made():
    text = (DEMO / "MADE.md").read_text()
    secs = int(re.search(r"wall time of the whole demo: (\d+) s", text).group(1))
    machine = re.search(r"- machine: (.*)", text).group(1)
    commit = re.search(r"- commit: (.*)", text).group(1)
    date = re.search(r"- finished: (\S+)", text).group(1)
    return secs, machine, commit, date


def compare(c, methods, fractions, a, b):
    """Cells where backbone a's mean beats backbone b's, out of all."""
    wins = [(m, f) for m in methods for f in fractions
            if float(c[(m, a, f)]["mean"]) > float(c[(m, b, f)]["mean"])]
    return wins


def block():
    c = cells()
    methods = list(dict.fromkeys(k[0] for k in c))
    fractions = list(dict.fromkeys(k[2] for k in c))
    secs, machine, commit, date = made()
    n = len(methods) * len(fractions)
    dino = compare(c, methods, fractions, "DINOv2-S (natural)", "DINOv2-S (random)")
    med = compare(c, methods, fractions, "LiteMedSAM (medical)", "LiteMedSAM (random)")
    med_list = ", ".join(f"{m} {f}" for m, f in med) or "none"
    lowest = min(c.values(), key=lambda r: float(r["mean"]))
    columns = len({(k[1], k[2]) for k in c})
    sig = [k for k, r in c.items()
           if r["method"] == "dka" and r["p_vs_best"] and float(r["p_vs_best"]) < 0.05]
    return f"""{START}
## What `just demo` shows

`just demo` fine-tunes the two pretrained backbones the package
registries carry, **DINOv2-S/14** (natural images) and **LiteMedSAM's TinyViT encoder**
(medical), and the same architectures with random weights, with six methods. The task is
grey/white-matter segmentation of real brain MRI (MNI152), training on 4 % or 12 % of the
slices and testing on a held-out slab with a gap on both sides. Each cell is the foreground IoU
(%), mean ± std over 3 draws; † marks cells not distinguishable from DKA (paired t, 95 %).
It took {secs // 60} min {secs % 60} s on {machine.split(",")[0]} (`results/demo/`, made at
commit {commit} on {date}; `results/demo/MADE.md` has the machine).

{main_table()}

<img src="results/demo/figure.png" width="480" alt="demo: foreground IoU per method, backbone and fraction">

**What it shows.** The whole pipeline on real images with real pretrained weights: data
fractions drawn per draw, six methods on a ViT and on a hierarchical medical encoder, repeated
draws with paired statistics, effective receptive fields of the trained adapters
(`results/demo/erf/`), provenance of every number. Every cell is above the 0 % foreground IoU of
predicting the majority class (background) everywhere, the lowest only just:
{lowest['method']} on {lowest['backbone']} at {lowest['fraction']}, {float(lowest['mean']):.2f} %.

**What it does not show: the paper's claims.**
- On this task DINOv2's pretrained weights beat its random weights in {len(dino)} of {n}
  method × fraction cells.
- LiteMedSAM's medical weights beat its random weights in {len(med)} of {n} cells ({med_list}).
- DKA is significantly different from the best baseline in {len(sig)} of {columns}
  columns.

Our reading is that the demo is too small to tell these methods apart. There is one subject,
30 test slices and 20 steps. The inputs are tiny: DINOv2 sees a 6 × 6 token grid at 84 px, and
LiteMedSAM works at 48 px instead of its 256. Grey/white matter is also an intensity task, which
a random patch embedding keeps well. The paper's numbers need its datasets, the ViT-B/16 and
MedSAM checkpoints and a GPU (`just reproduce-table2 data=... weights=...`, below).
{END}"""


def main():
    readme = ROOT / "README.md"
    text = readme.read_text()
    i, j = text.index(START), text.index(END) + len(END)
    new = text[:i] + block() + text[j:]
    if "--check" in sys.argv:
        sys.exit(0 if new == text else 1)
    readme.write_text(new)
    print("README.md: demo block written from results/demo/")


if __name__ == "__main__":
    main()
