"""The house's own import graph, read from the source (AST), not from a running interpreter.

    python -m facerefine.lab.import_graph [ROOT] [--json]

Every ``import``/``from ... import`` in every module counts, at module level or inside a function
(a lazy import is still a dependency). Edges point at the most specific module that exists:
``from ..core import score`` is an edge to ``core.score``. Reported:
- import loops: the strongly connected components with more than one module (or a module importing itself);
- upward imports: a runtime module (everything outside lab/ and tests/) importing the lab;
- runtime functions with more than 8 parameters or 80 lines (docs/ARCHITECTURE.md allows two of each);
- the largest files (lines).
tests/test_architecture.py asserts no loops and no upward imports.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path
from typing import Optional

PACKAGE = "facerefine"
SKIP_DIRS = {".venv", ".venv-ci", "__pycache__", "build", ".git", "node_modules", ".comfyui", "runs", "outputs",
             "web", "docs", "weights", "example_workflows", "configs"}
LAB = ("lab",)        # module prefixes that make up the lab (another list measures an older layout)
TESTS = ("tests",)


def package_root() -> Path:
    return Path(__file__).resolve().parents[1]


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name (relative to the package, '' for its __init__) -> file."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS or part.startswith(".") for part in rel.parts[:-1]):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _resolve(current: str, is_package: bool, level: int, target: Optional[str]) -> Optional[str]:
    if level == 0:
        if target is None or not (target == PACKAGE or target.startswith(PACKAGE + ".")):
            return None
        return target[len(PACKAGE) + 1:] if target != PACKAGE else ""
    base = current.split(".") if current else []
    if not is_package:
        base = base[:-1]
    drop = level - 1
    if drop > len(base):
        return None
    base = base[:len(base) - drop] if drop else base
    if target:
        base = base + target.split(".")
    return ".".join(base)


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package-internal modules that ``name`` imports (anywhere in the file)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                mod = _resolve(name, is_package, 0, alias.name)
                if mod is not None:
                    out.add(_existing(mod, known))
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve(name, is_package, node.level, node.module)
            if mod is None:
                continue
            for alias in node.names:
                sub = f"{mod}.{alias.name}" if mod else alias.name
                out.add(sub if sub in known else _existing(mod, known))
    out.discard(None)
    out.discard(name)  # ``from . import x`` of a name defined in the package's own __init__
    return out


def _existing(mod: str, known: dict[str, Path]) -> Optional[str]:
    while mod and mod not in known:
        mod = mod.rpartition(".")[0]
    return mod if mod in known else None


def graph(root: Optional[Path] = None) -> dict[str, set[str]]:
    root = Path(root) if root else package_root()
    known = modules(root)
    return {name: imports_of(name, path, known) for name, path in known.items()}


def loops(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, result = {}, {}, set(), [], []
    counter = 0
    for start in sorted(g):
        if start in index:
            continue
        work = [(start, iter(sorted(g.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(g.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    result.append(sorted(comp))
    return sorted(result)


def _under(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def is_runtime(module: str, lab=LAB) -> bool:
    return not _under(module, tuple(lab) + TESTS)


def upward_imports(g: dict[str, set[str]], lab=LAB) -> list[tuple[str, str]]:
    """(runtime module, lab module) pairs: the runtime must never import the lab."""
    return sorted((a, b) for a, deps in g.items() if is_runtime(a, lab) for b in deps if _under(b, lab))


def largest_files(root: Optional[Path] = None, top: int = 10, runtime_only: bool = False,
                  lab=LAB) -> list[tuple[str, int]]:
    root = Path(root) if root else package_root()
    sizes = []
    for name, path in modules(root).items():
        if runtime_only and not is_runtime(name, lab):
            continue
        sizes.append((str(path.relative_to(root)), sum(1 for _ in path.open(encoding="utf-8"))))
    return sorted(sizes, key=lambda t: -t[1])[:top]


MAX_PARAMS, MAX_LINES = 8, 80  # docs/ARCHITECTURE.md: a function takes an options object beyond this


def function_sizes(root: Optional[Path] = None, lab=LAB) -> list[dict]:
    """Every runtime function: module, name, parameters (self/cls not counted, *args/**kwargs one each), lines."""
    root = Path(root) if root else package_root()
    rows = []
    for name, path in modules(root).items():
        if not is_runtime(name, lab):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            a = node.args
            names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs] + [x.arg for x in (a.vararg, a.kwarg) if x]
            params = len(names) - (1 if names[:1] in (["self"], ["cls"]) else 0)
            rows.append({"module": name, "function": node.name, "params": params,
                         "lines": node.end_lineno - node.lineno + 1})
    return rows


def oversized(root: Optional[Path] = None, lab=LAB) -> dict[str, list[dict]]:
    """Runtime functions over the budgets: {"params": [...], "lines": [...]}, largest first."""
    rows = function_sizes(root, lab)
    return {"params": sorted((r for r in rows if r["params"] > MAX_PARAMS), key=lambda r: -r["params"]),
            "lines": sorted((r for r in rows if r["lines"] > MAX_LINES), key=lambda r: -r["lines"])}


def report(root: Optional[Path] = None, lab=LAB) -> dict:
    root = Path(root) if root else package_root()
    g = graph(root)
    runtime = [m for m in g if is_runtime(m, lab)]
    return {"root": str(root), "modules": len(g), "runtime_modules": len(runtime),
            "runtime_lines": sum(n for _, n in largest_files(root, top=10 ** 6, runtime_only=True, lab=lab)),
            "loops": loops(g), "upward_imports": upward_imports(g, lab), "oversized": oversized(root, lab),
            "largest_files": largest_files(root), "largest_runtime_files": largest_files(root, runtime_only=True,
                                                                                        lab=lab)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m facerefine.lab.import_graph", description=__doc__.splitlines()[0])
    p.add_argument("root", nargs="?", default=None, help="package root (default: this checkout)")
    p.add_argument("--lab", default=",".join(LAB),
                   help="comma-separated module prefixes that form the lab (before issue 13: core.bench,core.train,"
                        "core.eval,core.degrade,core.datasets,core.score.sensitivity,core.refine.training)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    r = report(Path(args.root) if args.root else None, tuple(x for x in args.lab.split(",") if x))
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"{r['modules']} modules ({r['runtime_modules']} runtime, {r['runtime_lines']} runtime lines)")
    print(f"import loops: {len(r['loops'])}")
    for comp in r["loops"]:
        print("  " + " <-> ".join(comp))
    print(f"runtime -> lab imports: {len(r['upward_imports'])}")
    for a, b in r["upward_imports"]:
        print(f"  {a} -> {b}")
    for kind, limit in (("params", MAX_PARAMS), ("lines", MAX_LINES)):
        print(f"runtime functions with more than {limit} {kind}: {len(r['oversized'][kind])}")
        for f in r["oversized"][kind]:
            print(f"  {f[kind]:4d} {f['module']}.{f['function']}")
    print("largest runtime files:")
    for f, n in r["largest_runtime_files"]:
        print(f"  {n:5d} {f}")
    print("largest files:")
    for f, n in r["largest_files"]:
        print(f"  {n:5d} {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
