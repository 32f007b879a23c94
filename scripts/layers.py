#!/usr/bin/env python3
"""The layer check `just test` runs: dependencies between a crate's top-level modules point one
way.

- dka-bench: each top-level module has a layer (the table in `crates/dka-bench/src/lib.rs`);
  a module may use only modules of lower layers. Any `crate::X` path (in a `use` or inline)
  from a module of layer n to a module of layer >= n (other than itself) fails the check.
- Every crate (dka-core, dka-data, dka-baselines, dka-bench): no cycle between top-level
  modules.

Paths are read from the source with comments, string literals and `#[cfg(test)]` modules
removed, so doc links, messages and test helpers do not count. `super::X` from a top-level module's `mod.rs` names the crate root's X
and counts too. Exit status 1 with one line per offending path, or per cycle.

Usage: scripts/layers.py [REPO_ROOT]
"""
import os
import re
import sys

# dka-bench's layers, bottom (0) to top; see the table in crates/dka-bench/src/lib.rs.
BENCH_LAYERS = {
    "util": 0,
    "config": 1,
    "train": 2,
    "report": 2,
    "grid": 3,
    "analysis": 3,
    "perf": 4,
    "cli": 5,
}
CRATES = ["dka-core", "dka-data", "dka-baselines", "dka-bench"]


def strip(text):
    """Rust source without comments, string and char literals (kept line by line)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and not re.match(r"\w", text[i - 1:i] or " "):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = '"' + hashes
            j = text.find(end, i + 2 + len(hashes))
            j = n if j < 0 else j + len(end)
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 4]):
            m = re.match(r"'(\\.|[^\\'])'", text[i:i + 4])
            out.append("' '")
            i += len(m.group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def without_tests(text):
    """`text` without its `#[cfg(test)] mod … { … }` blocks (test code may use anything)."""
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub(\(\w+\))?\s+)?mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        j, depth = m.end(), 1
        while depth and j < len(text):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        out.append(text[i:m.start()])
        out.append("\n" * text.count("\n", m.start(), j))
        i = j
    out.append(text[i:])
    return "".join(out)


def group_items(inner):
    """The first path segment of each item of a `{...}` use group."""
    depth, cur, items = 0, "", []
    for ch in inner:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    items.append(cur)
    return [m.group(0) for m in (re.match(r"\s*(\w+)", it) for it in items) if m]


def references(text, is_top_mod):
    """(line, target module, the path as written) for every crate-level path in `text`."""
    found = []
    prefixes = ["crate"] + (["super"] if is_top_mod else [])
    for prefix in prefixes:
        for m in re.finditer(r"\b" + prefix + r"::\{", text):
            i, depth = m.end(), 1
            j = i
            while depth and j < len(text):
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            line = text.count("\n", 0, m.start()) + 1
            for item in group_items(text[i:j - 1]):
                found.append((line, item, f"{prefix}::{{{item}…}}"))
        for m in re.finditer(r"\b" + prefix + r"::(\w+)", text):
            line = text.count("\n", 0, m.start()) + 1
            found.append((line, m.group(1), m.group(0)))
    return found


def modules(src):
    """Each .rs file under `src` with its top-level module (None for lib.rs / main.rs)."""
    for dirpath, _, files in os.walk(src):
        for f in sorted(files):
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            parts = os.path.relpath(path, src)[:-3].split(os.sep)
            top = None if parts[0] in ("lib", "main") else parts[0]
            yield path, top, len(parts) == 2 and parts[1] == "mod"


def graph(src):
    """Edges between top-level modules: {(from, to): [(path, line, written)]}."""
    tops = {t for _, t, _ in modules(src) if t}
    edges = {}
    for path, top, is_top_mod in modules(src):
        if top is None:
            continue
        text = without_tests(strip(open(path, encoding="utf-8").read()))
        for line, target, written in references(text, is_top_mod):
            if target in tops and target != top:
                edges.setdefault((top, target), []).append((path, line, written))
    return tops, edges


def cycles(tops, edges):
    """Strongly connected components of more than one module (Tarjan)."""
    adj = {t: sorted({b for (a, b) in edges if a == t}) for t in tops}
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in adj[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for t in sorted(tops):
        if t not in index:
            visit(t)
    return out


def check(root):
    problems = []
    for crate in CRATES:
        src = os.path.join(root, "crates", crate, "src")
        tops, edges = graph(src)
        for comp in cycles(tops, edges):
            via = "; ".join(
                f"{a} -> {b} ({os.path.relpath(edges[(a, b)][0][0], root)}:{edges[(a, b)][0][1]})"
                for a in comp for b in comp if (a, b) in edges
            )
            problems.append(f"{crate}: module cycle {' <-> '.join(comp)}: {via}")
        if crate != "dka-bench":
            continue
        unknown = sorted(tops - BENCH_LAYERS.keys())
        if unknown:
            problems.append(
                f"dka-bench: top-level module(s) {', '.join(unknown)} have no layer "
                "(add them to scripts/layers.py and the table in src/lib.rs)"
            )
        for (a, b), where in sorted(edges.items()):
            la, lb = BENCH_LAYERS.get(a), BENCH_LAYERS.get(b)
            if la is None or lb is None or lb < la:
                continue
            for path, line, written in where:
                problems.append(
                    f"{os.path.relpath(path, root)}:{line}: `{written}` points "
                    f"{'up' if lb > la else 'sideways'}: {a} (layer {la}) must not use {b} "
                    f"(layer {lb})"
                )
    return problems


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
    problems = check(os.path.abspath(root))
    for p in problems:
        print(p)
    if problems:
        print(f"layer check: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("layer check: dependencies point down in dka-bench; no module cycles in any crate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
