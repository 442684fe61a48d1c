"""The package's layering, read with ast over engine/ and kernels/: imports at module level and inside
functions alike (a lazy import is still a dependency). No import cycle among the modules, and no module
imports a layer above its own."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Lowest first: (module prefixes, why the layer sits there). A module may import its own layer and the
# layers below it; the longest prefix that matches places it. "engine" names the package's __init__
# only, so a new module outside the table is reported unplaced rather than taken for an entry point.
LAYERS = [
    (("kernels",), "fused ops usable on any tensor: know nothing of the engine"),
    (("engine.core",), "primitives every layer uses: atomic files, checkpoint files, EMA, schedules, optimizer "
                       "groups, strict state matching"),
    (("engine.packing", "engine.masks", "engine.models", "engine.data"),
     "building blocks: tensors and files in, tensors out; no run config"),
    (("engine.datagen",), "offline data tools: write what engine.data reads"),
    (("engine.config",), "the typed run config: checks names against the blocks (mask kinds, ViT sizes)"),
    (("engine.jepa", "engine.ac_jepa", "engine.hjepa", "engine.lewm", "engine.sigreg"),
     "the objectives: one training step around the models"),
    (("engine.builders",), "config -> models, objectives, data sets, loaders"),
    (("engine.reference_ckpt",), "the reference repos' checkpoint layout, read into built models"),
    (("engine.runtime",), "the training loop over its backends; evaluation is injected by the caller"),
    (("engine.eval", "engine.planning"), "uses of trained models: probes, features, anomaly, planning"),
    (("engine", "engine.train", "engine.plan", "engine.demo", "engine.api", "engine.export", "engine.eval.__main__",
      "engine.datagen.__main__"), "entry points and the public facade (engine.__all__)"),
]


def modules() -> dict[str, Path]:
    """Every module of engine/ and kernels/ by dotted name (a package by its __init__; a built extension
    by its file, so an import of it resolves to it)."""
    found = {}
    for pkg in ("engine", "kernels"):
        for p in (ROOT / pkg).rglob("*"):
            if p.suffix not in (".py", ".so"):
                continue
            parts = p.relative_to(ROOT).parts
            name = [*parts[:-1], p.name.split(".")[0]]
            found[".".join(name[:-1] if name[-1] == "__init__" else name)] = p
    return found


def _resolve(name: str, known) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(path: Path, module: str, known) -> set[str]:
    """The modules of `known` that `module` imports anywhere in its file. Importing one's own enclosing
    package (`import kernels` inside kernels.gather) is no edge: Python is already running it."""
    if path.suffix != ".py":
        return set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(m for a in node.names if (m := _resolve(a.name, known)) and m not in ancestors)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for a in node.names:
                # `from pkg import sub` needs pkg.sub; `from pkg import name` needs pkg's own code.
                m = f"{base}.{a.name}" if f"{base}.{a.name}" in known else _resolve(base, known)
                if m:
                    found.add(m)
    found.discard(module)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports(p, m, known) for m, p in known.items()}


def layer_of(module: str) -> int | None:
    best, level = -1, None
    for i, (prefixes, _why) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or (p != "engine" and module.startswith(p + "."))) and len(p) > best:
                best, level = len(p), i
    return level


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def upward(edges: dict[str, set[str]]) -> list[str]:
    """'a (layer i) -> b (layer j > i)' for every import of a higher layer."""
    return sorted(f"{m} (layer {layer_of(m)}) -> {i} (layer {layer_of(i)})"
                  for m, imps in edges.items() for i in imps if layer_of(i) > layer_of(m))


def test_the_scan_sees_the_package_and_places_every_module():
    edges = graph()
    assert len(edges) > 80 and "engine.runtime.trainer" in edges and "kernels.gather" in edges
    assert "engine.builders" in edges["engine.runtime.trainer"]          # a lazy import inside a function
    assert not [m for m in edges if layer_of(m) is None]


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_no_module_imports_a_higher_layer():
    assert upward(graph()) == []


def test_the_checks_catch_a_planted_cycle_and_upward_import():
    edges = {"engine.core.io": {"engine.runtime.trainer"}, "engine.runtime.trainer": {"engine.core.io"},
             "engine.config": set()}
    assert cycles(edges) == [["engine.core.io", "engine.runtime.trainer"]]
    assert upward(edges) == ["engine.core.io (layer 1) -> engine.runtime.trainer (layer 8)"]
