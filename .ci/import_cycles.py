#!/usr/bin/env python3
"""Reports import circles between the source files (and top-level modules) of each crate.

An edge A -> B means file A names an item of file B through `crate::`, `super::` or `self::`
(in a `use` or inline in code). Re-exports are followed: `crate::wire::Message`, re-exported
by wire.rs from wire/message.rs, is an edge to wire/message.rs, and a facade's own `pub use`
lines are not edges. `mod x;` declarations are not edges, and neither are references from a
file's inline `mod tests { use super::*; }` back to that file.

Reported: every strongly connected component of more than one file, and of more than one
top-level module (`cli`, `cluster`, ... of a crate's root). Exit status 1 when there is any.

Usage: .ci/import_cycles.py [CRATE_SRC_DIR ...]   (default: every crate's src/ in the workspace)
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH_RE = re.compile(r"\b((?:crate|super|self)(?:::(?:super|[A-Za-z_][A-Za-z0-9_]*|\{))+)")
INLINE_MOD_RE = re.compile(r"^(\s*)(?:pub(?:\([^)]*\))?\s+)?mod\s+([a-z_][a-z0-9_]*)\s*\{")
PATH_ATTR_RE = re.compile(r'#\[path\s*=\s*"([^"]+)"\]')
MOD_DECL_RE = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([a-z_][a-z0-9_]*)\s*;")


def crate_roots():
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in ("target", ".git", "node_modules", "fuzz")]
        if "Cargo.toml" in filenames and os.path.isdir(os.path.join(dirpath, "src")):
            yield os.path.join(dirpath, "src")


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    out = []
    for line in text.splitlines():
        # Drop `//` comments and string literals (good enough for rustfmt-formatted code).
        line = re.sub(r'"(?:\\.|[^"\\])*"', '""', line)
        i = line.find("//")
        out.append(line if i < 0 else line[:i])
    return out


class Crate:
    def __init__(self, src):
        self.src = src
        self.modules = {}  # module path tuple -> file
        self.files = {}  # file -> module path tuple
        for root_name in ("lib.rs", "main.rs"):
            root = os.path.join(src, root_name)
            if os.path.exists(root):
                self.load(root, ())

    def load(self, path, mod):
        path = os.path.normpath(path)
        if path in self.files:
            return
        self.files[path] = mod
        self.modules.setdefault(mod, path)
        lines = strip_comments(open(path, encoding="utf-8").read())
        base = os.path.basename(path)
        if base in ("lib.rs", "main.rs", "mod.rs"):
            child_dir = os.path.dirname(path)
        else:
            child_dir = path[: -len(".rs")]
        pending_path = None
        for line in lines:
            m = PATH_ATTR_RE.search(line)
            if m:
                pending_path = m.group(1)
                continue
            m = MOD_DECL_RE.match(line)
            if m and not line.startswith(" "):
                name = m.group(1)
                if pending_path:
                    child = os.path.join(os.path.dirname(path), pending_path)
                else:
                    child = os.path.join(child_dir, name + ".rs")
                    if not os.path.exists(child):
                        child = os.path.join(child_dir, name, "mod.rs")
                if os.path.exists(child):
                    self.load(child, mod + (name,))
            if line.strip() and not line.strip().startswith("#["):
                pending_path = None

    def resolve(self, segments):
        """The file holding the item at module path `segments` (longest module prefix)."""
        for n in range(len(segments), -1, -1):
            mod = tuple(segments[:n])
            if mod in self.modules:
                return self.modules[mod], segments[n:]
        return None, segments


def parse_file(crate, path):
    """(re-exports {name: [segments]}, references [[segments]]) of one file."""
    mod = crate.files[path]
    lines = strip_comments(open(path, encoding="utf-8").read())
    reexports, refs = {}, []
    inline = []  # stack of (indent, name) of inline modules
    stmt, stmt_pub, stmt_depth = None, False, 0
    for line in lines:
        while inline and re.match(r"^" + inline[-1][0] + r"\}", line):
            inline.pop()
        m = INLINE_MOD_RE.match(line)
        if m:
            inline.append((m.group(1), m.group(2)))
            continue
        here = mod + tuple(name for _, name in inline)
        depth = len(inline)
        stripped = line.strip()
        if stmt is None and re.match(r"(?:pub(?:\([^)]*\))?\s+)?use\s", stripped):
            stmt, stmt_pub, stmt_depth = "", stripped.startswith("pub"), depth
        if stmt is not None:
            stmt += " " + stripped
            if ";" in stripped:
                for segments in expand_use(stmt, here, stmt_depth):
                    if segments is None:
                        continue
                    if stmt_pub and stmt_depth == 0:
                        reexports[segments[-1]] = segments
                    else:
                        refs.append((segments, stmt_depth))
                stmt = None
            continue
        for m in PATH_RE.finditer(line):
            segs = absolute(m.group(1).rstrip(":{").split("::"), here)
            if segs is not None:
                refs.append((segs, depth))
    return reexports, refs


def absolute(parts, here):
    parts = [p for p in parts if p and p != "{"]
    out = list(here)
    if not parts:
        return None
    if parts[0] == "crate":
        out, parts = [], parts[1:]
    elif parts[0] in ("super", "self"):
        while parts and parts[0] in ("super", "self"):
            if parts[0] == "super":
                if not out:
                    return None
                out.pop()
            parts = parts[1:]
    else:
        return None
    return out + parts


def expand_use(stmt, here, depth):
    body = re.sub(r"^\s*(?:pub(?:\([^)]*\))?\s+)?use\s+", "", stmt).rstrip("; ")
    for path in expand_tree(body.replace(" ", "")):
        parts = path.split("::")
        if parts[-1] == "*" or parts[-1] == "self":
            parts = parts[:-1]
        parts = [p.split("as")[0] if re.match(r"^\w+as\w+$", p) else p for p in parts]
        yield absolute(parts, here)


def expand_tree(body):
    """`a::{b, c::{d, e}}` -> a::b, a::c::d, a::c::e."""
    i = body.find("{")
    if i < 0:
        return [body] if body else []
    prefix, inner = body[:i], body[i + 1 : body.rfind("}")]
    items, level, cur = [], 0, ""
    for ch in inner:
        if ch == "," and level == 0:
            items.append(cur)
            cur = ""
            continue
        level += ch == "{"
        level -= ch == "}"
        cur += ch
    items.append(cur)
    return [p for item in items if item for p in expand_tree(prefix + item)]


def scc(nodes, edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
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
            out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return [c for c in out if len(c) > 1]


def analyse(src):
    crate = Crate(src)
    parsed = {f: parse_file(crate, f) for f in crate.files}

    def target(segments, seen=()):
        f, rest = crate.resolve(segments)
        if f is None:
            return None
        if rest and rest[0] in parsed[f][0] and (f, rest[0]) not in seen:
            deeper = target(parsed[f][0][rest[0]] + rest[1:], seen + ((f, rest[0]),))
            if deeper is not None:
                return deeper
        return f

    edges, why = {}, {}
    for f, (_, refs) in parsed.items():
        for segments, depth in refs:
            t = target(segments)
            if t is None or t == f:
                continue
            # A file's own inline test module naming its parent is not an import.
            if depth > 0 and crate.files[t] == crate.files[f]:
                continue
            edges.setdefault(f, set()).add(t)
            why.setdefault((f, t), "::".join(segments))
    rel = lambda p: os.path.relpath(p, ROOT)
    problems = 0
    for comp in scc(crate.files, edges):
        problems += 1
        print(f"circle between files: {' <-> '.join(rel(c) for c in comp)}")
        for a in comp:
            for b in sorted(edges.get(a, ())):
                if b in comp:
                    print(f"    {rel(a)} -> {rel(b)}  ({why[(a, b)]})")
    top = lambda f: crate.files[f][0] if crate.files[f] else "<root>"
    mod_edges, mod_why = {}, {}
    for a, targets in edges.items():
        for b in targets:
            if top(a) != top(b) and "<root>" not in (top(a), top(b)):
                mod_edges.setdefault(top(a), set()).add(top(b))
                mod_why.setdefault((top(a), top(b)), (rel(a), rel(b)))
    for comp in scc({top(f) for f in crate.files}, mod_edges):
        problems += 1
        print(f"circle between modules of {rel(src)}: {' <-> '.join(comp)}")
        for a in comp:
            for b in sorted(mod_edges.get(a, ())):
                if b in comp:
                    print(f"    {a} -> {b}  (e.g. {mod_why[(a, b)][0]} -> {mod_why[(a, b)][1]})")
    return len(crate.files), sum(len(t) for t in edges.values()), problems


def main():
    srcs = sys.argv[1:] or sorted(crate_roots())
    total = 0
    for src in srcs:
        n_files, n_edges, problems = analyse(os.path.abspath(src))
        total += problems
        if "-v" in os.environ.get("IMPORT_CYCLES_FLAGS", ""):
            print(f"{os.path.relpath(src, ROOT)}: {n_files} files, {n_edges} edges, {problems} circles")
    print(f"import circles: {total}" if total else "import circles: none")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
