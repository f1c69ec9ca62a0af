"""Static checks of the package's layering (AST only; nothing is imported).

1. ``mc_jax.ops`` imports nothing from ``mc_jax`` outside itself except the leaf :mod:`mc_jax.typing`
   (no lazy imports inside functions either).
2. Every import inside ``mc_jax`` points down the layers of :data:`LAYERS` (docs/architecture.md): a module may
   import its own package and the packages below it, never one above.
3. No import cycle between the modules of ``mc_jax`` (module-level and function-level imports alike).
4. No function in ``mc_jax/ops`` longer than :data:`MAX_LINES` lines (docstring excluded).

    python tools/check_imports.py        # exit status 1 and one line per violation on failure
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mc_jax"
MAX_LINES = 50

# Lowest first. A module in layer i may import layers <= i. Packages not listed (none today) fail the check.
LAYERS = [
    {"mc_jax.typing", "mc_jax._xla_cpu", "mc_jax.pair_codes", "mc_jax.cli_common", "mc_jax.plots", "mc_jax.files"},
    {"mc_jax.ops"},
    {"mc_jax.kernels"},
    {"mc_jax.dispatch"},
    {"mc_jax.parallel"},
    {"mc_jax.config", "mc_jax.data", "mc_jax.configs_util"},
    {"mc_jax.layers"},
    {"mc_jax.models"},
    {"mc_jax.train", "mc_jax.configs"},
    {"mc_jax.eval"},
    {"mc_jax"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, name: str) -> list[tuple[str, int]]:
    """``[(imported mc_jax module, line)]`` of every import statement in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            found.append((base, node.lineno))
            found += [(f"{base}.{a.name}", node.lineno) for a in node.names]
    return [(m, line) for m, line in found if m == "mc_jax" or m.startswith("mc_jax.")]


def layer_of(name: str) -> int | None:
    best = None
    for i, members in enumerate(LAYERS):
        for member in members:
            if name == member or name.startswith(member + "."):
                if best is None or len(member) > len(best[1]):
                    best = (i, member)
    return None if best is None else best[0]


def long_functions(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
                body = body[1:]
            if not body:
                continue
            lines = body[-1].end_lineno - body[0].lineno + 1
            if lines > MAX_LINES:
                out.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.name} has {lines} lines (> {MAX_LINES})")
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (module -> imported modules) or None (iterative DFS)."""
    color = {n: 0 for n in graph}
    for start in graph:
        if color[start]:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        color[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                color[node] = 2
                stack.pop()
                path.pop()
            elif color.get(child) == 1:
                return path[path.index(child):] + [child]
            elif color.get(child) == 0:
                color[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))
    return None


def check() -> list[str]:
    problems = []
    files = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        graph[name] = set()
        own = layer_of(name)
        if own is None:
            problems.append(f"{path.relative_to(ROOT)}: module {name} is in no layer of tools/check_imports.py")
            continue
        for target, line in imports(path, name):
            # "from mc_jax.ops import memories" names a module or an attribute: keep the longest module that exists
            while target not in files and "." in target:
                target = target.rpartition(".")[0]
            if target not in files or target == name:
                continue
            is_parent_package = name.startswith(target + ".") and path.name != "__init__.py"
            if not is_parent_package:
                graph[name].add(target)
            other = layer_of(target)
            if other is not None and other > own:
                problems.append(f"{path.relative_to(ROOT)}:{line}: {name} imports {target}, a layer above it")
    problems = list(dict.fromkeys(problems))  # "from a import b" is seen as a and a.b: report once
    cycle = find_cycle(graph)
    if cycle:
        problems.append("import cycle: " + " -> ".join(cycle))
    for path in sorted((PACKAGE / "ops").rglob("*.py")):
        problems += long_functions(path)
    return problems


def main() -> int:
    problems = check()
    for line in problems:
        print(line)
    print(f"check_imports: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
