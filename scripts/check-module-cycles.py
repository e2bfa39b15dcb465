#!/usr/bin/env python3
"""Finds import cycles between the files of a module directory (default: src/engine), and
modules that must not depend on each other.

A file depends on another when it names it: `super::NAME`, `crate::engine::NAME`,
`super::super::NAME` (from a subdirectory), in `use` lines or in paths in code. Test-only
code (`#[cfg(test)]` modules and `tests.rs`) is left out: tests may reach anywhere. Prints
each cycle (a strongly connected component of more than one file) and exits 1 if any.

Usage: scripts/check-module-cycles.py [DIR]
"""
import pathlib
import re
import sys

root = pathlib.Path(__file__).resolve().parent.parent
directory = root / (sys.argv[1] if len(sys.argv) > 1 else "src/engine")
crate_path = "crate::" + "::".join(directory.relative_to(root / "src").parts)


def module_of(path: pathlib.Path) -> str:
    rel = path.relative_to(directory)
    return rel.parts[0].removesuffix(".rs") if rel.parts[0] != "mod.rs" else "mod"


def strip_tests(text: str) -> str:
    """Drops `#[cfg(test)] mod name { ... }` blocks (brace-matched) and `#[cfg(test)]` items."""
    out, i = [], 0
    pattern = re.compile(r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{")
    while True:
        m = pattern.search(text, i)
        if not m:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while depth and j < len(text):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j


files = [p for p in directory.rglob("*.rs") if p.name != "tests.rs"]
names = {module_of(p) for p in files} - {"mod"}
graph = {name: set() for name in names}
for path in files:
    source = module_of(path)
    if source == "mod":
        continue
    text = strip_tests(path.read_text())
    text = re.sub(r"//[^\n]*", "", text)
    depth = len(path.relative_to(directory).parts) - 1
    prefixes = ["super::" * (depth + 1), crate_path + "::"]
    for prefix in prefixes:
        for m in re.finditer(re.escape(prefix) + r"(\{[^}]*\}|\w+)", text):
            group = m.group(1)
            targets = re.findall(r"\b(\w+)\b", group) if group.startswith("{") else [group]
            for target in targets:
                if target in names and target != source:
                    graph[source].add(target)

# Tarjan's strongly connected components.
index, low, stack, on_stack, sccs, counter = {}, {}, [], set(), [], [0]


def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on_stack:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        component = []
        while True:
            w = stack.pop()
            on_stack.discard(w)
            component.append(w)
            if w == v:
                break
        sccs.append(sorted(component))


for v in sorted(graph):
    if v not in index:
        visit(v)

print(f"{directory.relative_to(root)}: {len(graph)} modules")
for name in sorted(graph):
    print(f"  {name} -> {', '.join(sorted(graph[name])) or '(nothing)'}")
cycles = [c for c in sccs if len(c) > 1]
for cycle in cycles:
    print("CYCLE:", " <-> ".join(cycle))
if not cycles:
    print("no cycles")
sys.exit(1 if cycles else 0)
