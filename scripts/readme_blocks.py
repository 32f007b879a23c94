"""The README blocks that scripts write from committed results (between a start and an end
marker): `readme_demo.py` and `readme_bench.py` use `rewrite`."""
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def rewrite(start, end, block, source):
    """Replaces README.md's text from `start` to `end` (markers included) with `block`; with
    `--check` on the command line, writes nothing and exits 1 when that would change it."""
    text = README.read_text()
    i, j = text.index(start), text.index(end) + len(end)
    new = text[:i] + block + text[j:]
    if "--check" in sys.argv:
        sys.exit(0 if new == text else 1)
    README.write_text(new)
    print(f"README.md: {source}")
