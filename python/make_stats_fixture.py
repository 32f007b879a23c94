"""Reference numbers for dka-bench's paired statistics (crates/dka-bench/src/stats.rs).

Writes crates/dka-bench/tests/data/stats_fixture.json: for fixed pairs of score lists, SciPy's
paired t-test (`scipy.stats.ttest_rel`, two-sided) and the 95 % interval of the mean
difference (`scipy.stats.t.interval(0.95, n - 1, loc=mean, scale=sem)`). The Rust unit test
compares its own p-values and intervals with these to 1e-9 relative.

Run from the repository root: .venv/bin/python python/make_stats_fixture.py
"""

import json
import math
import pathlib

import numpy as np
import scipy
from scipy import stats

OUT = pathlib.Path("crates/dka-bench/tests/data/stats_fixture.json")


def cases():
    """Named (a, b) lists: five-draw tables like the paper's, and the extremes of the t law."""
    rng = np.random.default_rng(20260101)
    yield "five draws, clear gain", [71.2, 74.0, 69.8, 77.9, 73.1], [66.0, 70.1, 69.9, 71.3, 68.7]
    yield "five draws, no real gain", [0.712, 0.69, 0.705, 0.731, 0.688], [0.70, 0.702, 0.699, 0.72, 0.69]
    yield "two draws (df 1)", [0.81, 0.84], [0.78, 0.80]
    yield "three draws (df 2)", [12.0, 15.5, 11.25], [10.0, 14.0, 11.0]
    yield "four draws, tiny t", [0.5001, 0.4998, 0.5003, 0.4999], [0.5, 0.5, 0.5, 0.5]
    yield "six draws, huge t", [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [0.9, 1.9001, 2.9, 3.8999, 4.9, 5.9002]
    yield "negative difference", [60.1, 58.3, 61.0, 59.4, 57.9], [63.2, 62.0, 63.9, 61.7, 62.5]
    a = rng.normal(0.7, 0.05, 30)
    yield "thirty draws", a.tolist(), (a - rng.normal(0.01, 0.02, 30)).tolist()
    a = rng.normal(0.5, 0.1, 200)
    yield "two hundred draws", a.tolist(), (a - rng.normal(0.002, 0.03, 200)).tolist()


def main():
    out = []
    for name, a, b in cases():
        a, b = np.asarray(a, float), np.asarray(b, float)
        d = a - b
        n = len(d)
        res = stats.ttest_rel(a, b)
        mean = float(np.mean(d))
        sem = float(np.std(d, ddof=1) / math.sqrt(n))
        lo, hi = stats.t.interval(0.95, n - 1, loc=mean, scale=sem)
        out.append(
            {
                "name": name,
                "a": a.tolist(),
                "b": b.tolist(),
                "mean_diff": mean,
                "t_statistic": float(res.statistic),
                "p_value": float(res.pvalue),
                "t_quantile": float(stats.t.ppf(0.975, n - 1)),
                "t_ci95": [float(lo), float(hi)],
            }
        )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "made_by": "python/make_stats_fixture.py",
        "scipy": scipy.__version__,
        "numpy": np.__version__,
        "what": "scipy.stats.ttest_rel(a, b) two-sided p-value; "
        "scipy.stats.t.interval(0.95, n-1, loc=mean(a-b), scale=sem(a-b)); "
        "t_quantile = scipy.stats.t.ppf(0.975, n-1)",
        "cases": out,
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {OUT} ({len(out)} cases, SciPy {scipy.__version__})")


if __name__ == "__main__":
    main()
