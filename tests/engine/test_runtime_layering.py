"""engine.runtime's imports, read with ast (function-level imports included): no cycle among its modules,
and nothing from the layers above it (the entry points, planning)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# engine.eval is not listed: its periodic probe (engine.eval.periodic) is the loop's evaluation hook.
ABOVE = ("engine.train", "engine.demo", "engine.plan", "engine.planning")


def _imports(path: Path, module: str) -> set[str]:
    package = module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def _runtime_graph() -> dict[str, set[str]]:
    files = {f"engine.runtime.{p.stem}": p for p in (ROOT / "engine" / "runtime").glob("*.py") if p.stem != "__init__"}
    return {m: _imports(p, m) for m, p in files.items()}


def test_runtime_imports_no_higher_layer():
    bad = {m: sorted(i for i in imps if i.startswith(ABOVE)) for m, imps in _runtime_graph().items()}
    assert not {m: v for m, v in bad.items() if v}


def test_runtime_modules_form_no_cycle():
    graph = _runtime_graph()
    edges = {m: {i for i in imps if i in graph and i != m} for m, imps in graph.items()}
    state = {}

    def visit(m, path):
        if state.get(m) == "done":
            return
        assert state.get(m) != "open", "import cycle: " + " -> ".join(path + [m])
        state[m] = "open"
        for n in sorted(edges[m]):
            visit(n, path + [m])
        state[m] = "done"

    for m in sorted(edges):
        visit(m, [])
