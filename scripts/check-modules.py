#!/usr/bin/env python3
"""Checks that the modules of a Rust crate depend on each other one way only.

    scripts/check-modules.py [SRC]            # every level; SRC defaults to crates/smtpgate/src
    scripts/check-modules.py SRC --inner M    # only the submodules of M (M may be `a::b`)
    scripts/check-modules.py SRC --edges      # also list every edge of every level

A *level* is one module's children: the crate root's top-level modules (`config`, `filter`, ...),
then the submodules of each module that has any (`filter::arc`, `filter::registry`, ...), at every
depth. At each level, child A depends on child B when code in A (any file under it) names a path
inside B: `crate::B::..` (in code or in `use crate::{B::.., ..}` groups), `super::B::..`,
`self::..`, or a name the parent re-exports from B (`pub use b::Thing;` in lib.rs or mod.rs).

The check prints every strongly connected group of more than one child (modules that all reach each
other), with the edges inside it and where the first use of each is, and exits 1 if there is any;
a layered crate has none.

Paths are read from the text, not compiled: comments, string and character literals are blanked
first, and test code is left out (`tests.rs`, `*_test.rs`, `tests/` folders, `#[cfg(test)]` items,
and modules declared under `#[cfg(test)]`); tests may reach anywhere. `main.rs` is a crate of its
own (it names the library as `smtpgate::`) and is not read. Not understood: `#[path]` attributes,
glob re-exports, and inline `mod x { .. }` blocks outside tests (their paths count for the file).
"""

import argparse
import re
import sys
from pathlib import Path

CFG_TEST = re.compile(r"#\s*\[\s*cfg\s*\(\s*test\s*\)\s*\]")
USE_ITEM = re.compile(r"\buse\s+([^;]*);")
# A use item starts a statement: after `;`, a brace, an attribute's `]`, or a visibility.
USE_STARTS = re.compile(r"(^|[;{}\]]|\bpub|\bpub\s*\([^)]*\))$")
PUB_IN = re.compile(r"\bpub\s*\(\s*in\s+[^)]*\)")
CODE_PATH = re.compile(r"(?<![\w$:])\$?(crate|super|self)((?:\s*::\s*\w+)+)")
MOD_DECL = re.compile(r"^\s*(?:pub(?:\s*\([^)]*\))?\s+)?mod\s+(\w+)\s*;\s*$")


def blank(text):
    """The text with comments and string/char literals replaced by spaces (newlines kept), so
    offsets and line numbers stay those of the file."""
    out = list(text)
    i, n = 0, len(text)

    def wipe(start, end):
        for k in range(start, min(end, n)):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        c = text[i]
        if text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            wipe(i, end)
            i = end
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            wipe(i, j)
            i = j
        elif (raw := raw_string_start(text, i)) is not None:
            close = '"' + raw.group(1)
            end = text.find(close, i + raw.end())
            end = n if end < 0 else end + len(close)
            wipe(i, end)
            i = end
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            wipe(i, j + 1)
            i = j + 1
        elif c == "'":
            # A char literal ('x', '\n', '\u{1F600}'), or else a lifetime or label ('a).
            m = re.match(r"'(?:\\(?:u\{[0-9a-fA-F]*\}|x..|.)|[^\\'\n])'", text[i:i + 16])
            if m:
                wipe(i, i + m.end())
                i += m.end()
            else:
                i += 1
        else:
            i += 1
    return "".join(out)


def raw_string_start(text, i):
    """The match of a raw string's opening (`r"`, `r#"`, `br##"`, ..) at `i`, if one starts there."""
    if text[i] not in "bcr" or (i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_")):
        return None
    return re.match(r'[bc]?r(#*)"', text[i:i + 260])


def skip_item(text, start):
    """The end of the item that starts at `start`: after its `;` or its `{ .. }` block."""
    depth, i, n = 0, start, len(text)
    while i < n:
        c = text[i]
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif depth == 0 and c == ";":
            return i + 1
        elif depth == 0 and c == "{":
            braces = 0
            while i < n:
                braces += {"{": 1, "}": -1}.get(text[i], 0)
                i += 1
                if braces == 0:
                    return i
        i += 1
    return n


def strip_tests(code):
    """Blanks every `#[cfg(test)]` item; returns the code and the modules declared under one."""
    test_mods = set()
    out = list(code)
    for m in CFG_TEST.finditer(code):
        end = skip_item(code, m.end())
        item = code[m.end():end]
        while (attr := re.match(r"\s*#\s*\[", item)) is not None:  # further attributes
            item = item[attribute_end(item, attr.end()):]
        if decl := MOD_DECL.match(item):
            test_mods.add(decl.group(1))
        for k in range(m.start(), end):
            if out[k] != "\n":
                out[k] = " "
    return "".join(out), test_mods


def attribute_end(text, after_bracket):
    """The offset just past the `]` that closes an attribute whose `[` ends at `after_bracket`."""
    depth, i = 1, after_bracket
    while i < len(text) and depth:
        depth += {"[": 1, "]": -1}.get(text[i], 0)
        i += 1
    return i


def use_tree_paths(tree):
    """`crate::{a, b::{c, d as e}, f::*}` -> [['crate','a'], ['crate','b','c'], ...]; each path
    with the name it binds (its alias or last segment; None for a glob)."""
    tokens = re.findall(r"::|[{},*]|\w+", tree)
    pos = 0

    def parse(prefix):
        nonlocal pos
        found = []
        path = list(prefix)
        while pos < len(tokens):
            t = tokens[pos]
            if t == "{":
                pos += 1
                while pos < len(tokens) and tokens[pos] != "}":
                    found += parse(path)
                    if pos < len(tokens) and tokens[pos] == ",":
                        pos += 1
                pos += 1
                return found
            if t in (",", "}"):
                break
            pos += 1
            if t == "::":
                continue
            if t == "*":
                return found + [(path, None)]
            if t == "as":
                alias = tokens[pos] if pos < len(tokens) else None
                pos += 1
                return found + [(path, alias)]
            if t == "self" and prefix and path == list(prefix):
                continue  # `a::{self, ..}` names `a` itself
            path.append(t)
        return found + [(path, path[-1] if path else None)]

    return [(p, name) for p, name in parse([]) if p]


class Crate:
    """The crate's files (test code left out), each with its module path and blanked code."""

    def __init__(self, src):
        self.src = Path(src)
        self.files = {}  # module path (tuple) -> (relative file name, code)
        test_mods = set()
        for path in sorted(self.src.rglob("*.rs")):
            rel = path.relative_to(self.src)
            if rel.name == "main.rs" and len(rel.parts) == 1:
                continue
            if rel.name == "tests.rs" or rel.stem.endswith("_test") or "tests" in rel.parts[:-1]:
                continue
            module = module_path(rel)
            code, tests_here = strip_tests(blank(path.read_text(encoding="utf-8")))
            test_mods |= {module + (m,) for m in tests_here}
            self.files[module] = (str(rel), code)
        for module in list(self.files):
            if any(module[: len(t)] == t for t in test_mods):
                del self.files[module]

    def children(self, parent):
        return sorted({m[len(parent)] for m in self.files if len(m) > len(parent) and m[: len(parent)] == parent})

    def parents(self):
        """Every module that has children, the crate root () first."""
        return sorted({m[:k] for m in self.files for k in range(len(m))}, key=lambda p: (len(p), p))

    def references(self, module):
        """Every path the file of `module` names, absolute from the crate root, with its line."""
        rel, code = self.files[module]
        code = PUB_IN.sub(lambda m: " " * len(m.group(0)), code)
        kids = set(self.children(module))
        uses = [m for m in USE_ITEM.finditer(code) if USE_STARTS.search(code[: m.start()].rstrip()[-30:])]
        for m in uses:
            line = code.count("\n", 0, m.start()) + 1
            for path, name in use_tree_paths(m.group(1)):
                absolute = resolve(module, path, kids)
                if absolute:
                    yield absolute, name, line
        for m in uses:  # the rest of the file: paths in code
            code = code[: m.start()] + re.sub(r"[^\n]", " ", m.group(0)) + code[m.end() :]
        for m in CODE_PATH.finditer(code):
            path = [m.group(1)] + re.findall(r"\w+", m.group(2))
            absolute = resolve(module, path, kids)
            if absolute:
                yield absolute, None, code.count("\n", 0, m.start()) + 1


def module_path(rel):
    parts = list(rel.with_suffix("").parts)
    if parts[-1] in ("mod", "lib"):
        parts.pop()
    return tuple(parts)


def resolve(module, path, children):
    """The absolute path (tuple) that `path`, written in `module`, names; None for another crate."""
    head, rest = path[0], path[1:]
    if head == "crate":
        return tuple(rest)
    if head in ("self", "super"):
        base = list(module)
        while path and path[0] in ("self", "super"):
            if path.pop(0) == "super":
                if not base:
                    return None
                base.pop()
        return tuple(base + path)
    if head in children:  # a child module named without `self::`
        return tuple(module) + tuple(path)
    return None


def level_graph(crate, parent):
    """The edges between the children of `parent`: {(from, to): [(file, line), ...]}."""
    children = set(crate.children(parent))
    depth = len(parent)
    reexports = {}  # a name the parent's file binds -> the child it comes from
    if parent in crate.files:
        for target, name, _ in crate.references(parent):
            if name and len(target) > depth and target[:depth] == parent and target[depth] in children:
                reexports.setdefault(name, target[depth])
    edges = {}
    for module in crate.files:
        if len(module) <= depth or module[:depth] != parent:
            continue
        source = module[depth]
        for target, _, line in crate.references(module):
            if len(target) <= depth or target[:depth] != parent:
                continue
            child = target[depth] if target[depth] in children else reexports.get(target[depth])
            if child and child != source:
                edges.setdefault((source, child), []).append((crate.files[module][0], line))
    return children, edges


def circles(nodes, edges):
    """The strongly connected groups of more than one node (Tarjan), each sorted, in order."""
    succ = {n: sorted({b for a, b in edges if a == n}) for n in nodes}
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for n in sorted(nodes):
        if n not in index:
            visit(n)
    return sorted(groups)


def level_name(parent):
    return "crate root" if not parent else "::".join(parent)


def check(src, only=None, show_edges=False, out=None):
    """Prints the circles of every level (or of `only`); returns how many there are."""
    out = out or sys.stdout
    crate = Crate(src)
    parents = crate.parents() if only is None else [tuple(only.split("::"))]
    found = 0
    for parent in parents:
        nodes, edges = level_graph(crate, parent)
        groups = circles(nodes, edges)
        found += len(groups)
        if show_edges or groups or only is not None:
            print(f"{level_name(parent)}: {len(nodes)} modules, {len(edges)} edges, "
                  f"{len(groups)} circular group(s)", file=out)
        if show_edges:
            for (a, b), uses in sorted(edges.items()):
                print(f"  {a} -> {b}  ({len(uses)} uses; first {uses[0][0]}:{uses[0][1]})", file=out)
        for group in groups:
            print(f"  CIRCLE in {level_name(parent)}: {', '.join(group)}", file=out)
            for (a, b), uses in sorted(edges.items()):
                if a in group and b in group:
                    print(f"    {a} -> {b}  ({len(uses)} uses; first {uses[0][0]}:{uses[0][1]})", file=out)
    levels = len(parents)
    if found:
        print(f"check-modules: FAIL: {found} circular group(s) in {levels} level(s) of {src}", file=out)
    else:
        print(f"check-modules: ok: no circular group in {levels} level(s) of {src}", file=out)
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", nargs="?", default="crates/smtpgate/src")
    parser.add_argument("--inner", metavar="MODULE", help="only the submodules of MODULE (a::b)")
    parser.add_argument("--edges", action="store_true", help="list every edge")
    args = parser.parse_args(argv)
    if not Path(args.src).is_dir():
        parser.error(f"{args.src}: not a directory")
    return 1 if check(args.src, args.inner, args.edges) else 0


if __name__ == "__main__":
    sys.exit(main())
