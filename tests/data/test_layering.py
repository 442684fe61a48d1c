"""The training-time data path (engine.data) imports none of the offline data tools (engine.datagen), at
module or function level: read with ast, so a lazy import inside a function counts too."""
from tests.engine.test_runtime_layering import ROOT, _imports


def test_data_path_imports_no_offline_tool():
    modules = {f"engine.data.{'.'.join(p.relative_to(ROOT / 'engine' / 'data').with_suffix('').parts)}": p
               for p in (ROOT / "engine" / "data").rglob("*.py")}
    assert len(modules) > 5, "the scan found the package"
    bad = {m: sorted(i for i in _imports(p, m) if i == "engine.datagen" or i.startswith("engine.datagen."))
           for m, p in modules.items()}
    assert not {m: v for m, v in bad.items() if v}
