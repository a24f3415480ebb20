"""The package's layers: every import points down, no import loop, nothing of the benchmark harness inside.

Imports are read from the source (module level, function level and type-checking blocks alike) of every
module of ``scar`` and ``scar_kernels``; an import of ``a.b.c`` counts as an edge to the deepest of
``a.b.c``, ``a.b``, ``a`` that is one of these modules.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("scar_kernels", "scar")

# Rank of each layer: a module may import modules of a lower rank, or of its own subpackage.
LAYERS = {
    "scar_kernels": 0,
    "scar._checks": 1,
    "scar.game": 2,
    "scar.shapley": 3,
    "scar.scoring": 4,
    "scar.credit": 5,
    "scar.heatmap": 6,
    "scar.demo": 6,
    "scar.integrations": 7,
    "scar.distributed": 7,
    "scar.cli": 8,
    "scar": 9,  # the package's own __init__: the facade over every layer
}
FORBIDDEN = ("shap", "captum", "shapiq", "scar_bench", "grpo", "matplotlib", "bench", "experiments")
# imported only by the integrations that need them (scar.integrations.*, scar.distributed)
OPTIONAL = ("trl", "verl", "ray")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            found[module_name(path)] = path
    return found


MODULES = modules()


def imported_names(path: Path, name: str) -> set[str]:
    """Absolute names of everything ``path`` imports (relative imports resolved against ``name``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def resolve(target: str) -> str | None:
    """The deepest module of the two packages that ``target`` names, or None."""
    parts = target.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def edges() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        deps = {resolve(t) for t in imported_names(path, name)}
        # importing a submodule runs its parents' __init__ too, but that is not an edge of the layering
        graph[name] = {d for d in deps if d is not None and d != name and not name.startswith(d + ".")}
    return graph


def layer(name: str) -> str:
    best = ""
    for key in LAYERS:
        if (name == key or name.startswith(key + ".")) and len(key) > len(best):
            best = key
    return best


def test_every_module_has_a_layer():
    assert all(layer(name) for name in MODULES), [n for n in MODULES if not layer(n)]


def upward_edges(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{s} ({layer(s)}) imports {t} ({layer(t)})" for s, ts in graph.items() for t in ts
                  if layer(s) != layer(t) and LAYERS[layer(t)] >= LAYERS[layer(s)])


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state:
                found = visit(v)
                if found:
                    return found
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state:
            found = visit(u)
            if found:
                return found
    return None


def test_imports_point_down():
    bad = upward_edges(edges())
    assert not bad, "\n".join(bad)


def test_no_import_loop():
    cycle = find_cycle(edges())
    assert cycle is None, "import loop: " + " -> ".join(cycle or [])


def test_the_library_reaches_the_kernels_only_through_ops():
    offenders = [(s, t) for s, ts in edges().items() if s.startswith("scar.") or s == "scar" for t in ts
                 if t.startswith("scar_kernels") and t != "scar_kernels.ops"]
    assert not offenders


def test_kernels_never_import_the_library():
    offenders = [(s, t) for s, ts in edges().items() if s.startswith("scar_kernels") for t in ts
                 if t == "scar" or t.startswith("scar.")]
    assert not offenders


def test_installed_package_carries_no_harness_or_peers():
    offenders = []
    for name, path in MODULES.items():
        for target in imported_names(path, name):
            if target.split(".")[0] in FORBIDDEN:
                offenders.append(f"{name} imports {target}")
    assert not offenders, offenders


def test_optional_engines_are_imported_only_by_their_integration():
    offenders = []
    for name, path in MODULES.items():
        if name.startswith(("scar.integrations", "scar.distributed")):
            continue
        for target in imported_names(path, name):
            if target.split(".")[0] in OPTIONAL:
                offenders.append(f"{name} imports {target}")
    assert not offenders, offenders


def test_importing_the_kernel_ops_loads_nothing_of_scar():
    code = ("import scar_kernels.ops, sys; "
            "print([m for m in sys.modules if m == 'scar' or m.startswith('scar.')])")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_the_checks_find_a_planted_loop_and_upward_import():
    graph = {k: set(v) for k, v in edges().items()}
    assert "scar.credit.rewards" in graph["scar.credit.rewarder"]
    graph["scar.game.tokens"].add("scar.credit.rewarder")  # game -> credit: upward, and a loop through rewarder
    assert any(e.startswith("scar.game.tokens (scar.game) imports scar.credit.rewarder") for e in upward_edges(graph))
    cycle = find_cycle(graph)
    assert cycle is not None and "scar.game.tokens" in cycle and "scar.credit.rewarder" in cycle
