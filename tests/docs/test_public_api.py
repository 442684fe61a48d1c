"""One public API: engine.__all__. The examples use nothing else from engine, every public name resolves,
and the package says it is typed."""
import ast
from pathlib import Path

import engine

ROOT = Path(__file__).resolve().parents[2]


def test_examples_use_only_public_names():
    for path in sorted((ROOT / "examples").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "engine":
                raise AssertionError(f"{path.name}:{node.lineno}: `from {node.module} import ...`; use `import engine` "
                                     f"and the names of engine.__all__")
            if isinstance(node, ast.Import):
                bad = [a.name for a in node.names if a.name.startswith("engine.")]
                assert not bad, f"{path.name}:{node.lineno}: imports {bad}; use `import engine`"
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "engine":
                assert node.attr in engine.__all__, f"{path.name}:{node.lineno}: engine.{node.attr} is not public"


def test_public_names_resolve_and_package_is_typed():
    assert len(engine.__all__) == len(set(engine.__all__))
    for name in engine.__all__:
        assert getattr(engine, name) is not None, name
    assert isinstance(engine.__version__, str) and engine.__version__.count(".") == 2
    assert (ROOT / "engine" / "py.typed").exists() and (ROOT / "kernels" / "py.typed").exists()
    from engine import api
    assert not hasattr(api, "__all__"), "engine.api must not keep a second public list"
    assert engine.build_model is api.build_model and engine.TargetEMA is api.TargetEMA
