"""Write docs/config.md, the configuration reference, from the typed config in engine/config.py.

    python docs/gen_config_reference.py            # rewrite docs/config.md
    python docs/gen_config_reference.py --check    # exit 1 if docs/config.md is stale (CI's test does this)

Every key of every section with its type, its default and the comment written beside the field in
engine/config.py, so the reference cannot drift from what the loader accepts.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
import typing
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "config.md"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HEADER = """# Configuration reference

Generated from `engine/config.py` by `python docs/gen_config_reference.py`; do not edit by hand.

A run config is YAML in the reference repos' layout: sections of keys, read into typed dataclasses.
Override any key from the command line with `--set section.key=value` (a list item:
`--set mask.0.num_blocks=4`). An unknown key, a wrong type or an impossible value is an error that
names the key. Keys read only by the reference launchers, or by no reference trainer, are accepted and
reported as ignored: {launcher}.
"""


def _type(tp) -> str:
    text = tp if isinstance(tp, str) else getattr(tp, "__name__", str(tp))
    text = text.replace("typing.", "")
    m = re.fullmatch(r"Optional\[(.*)\]", text)
    return f"{m.group(1)} or null" if m else text


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    if dataclasses.is_dataclass(value) or (isinstance(value, list) and value and dataclasses.is_dataclass(value[0])):
        return "(section)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _comments(cls) -> dict[str, str]:
    """The `# ...` comment on each field's line in the class source (the reason the field exists)."""
    out = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+):[^#]*#\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def _table(fields, comments: dict[str, str]) -> list[str]:
    lines = ["| key | type | default | notes |", "|---|---|---|---|"]
    for f in fields:
        notes = comments.get(f.name, "").replace("|", "\\|")
        lines.append(f"| `{f.name}` | {_type(f.type)} | `{_default(f)}` | {notes} |")
    return lines + [""]


def _section(title: str, cls, note: str = "") -> list[str]:
    return [f"## `{title}`", ""] + ([note, ""] if note else []) + _table(dataclasses.fields(cls), _comments(cls))


def render() -> str:
    from engine import config as c
    launcher = ", ".join(f"`{(s + '.') if s else ''}{k}`" for table in (c.LAUNCHER_KEYS, c.REFERENCE_UNUSED_KEYS)
                         for s, keys in table.items() for k in keys)
    lines = [HEADER.format(launcher=launcher)]
    hints = typing.get_type_hints(c.Config)
    top = [f for f in dataclasses.fields(c.Config)
           if not dataclasses.is_dataclass(hints[f.name]) and f.name not in ("mask", "ignored_keys", "source")]
    lines += ["## Top level", ""] + _table(top, _comments(c.Config))
    for name in ("data", "data_aug"):
        lines += _section(name, hints[name])
    lines += _section("mask", c.VideoMaskConfig, "Video (V-JEPA, V-JEPA 2): a list of these, one per mask config; "
                      "address an item as `mask.<i>.<key>`.")
    lines += _section("mask (I-JEPA)", c.ImageMaskConfig, "Images (`app: ijepa`): one mapping.")
    for name in ("model", "loss", "optimization", "meta", "logging", "planning", "hierarchy"):
        lines += _section(name, hints[name])
    lines += ["## Values not supported", "", "Any other value of these keys is an error naming the key.", "",
              "| key | accepted | acts for app | why |", "|---|---|---|---|"]
    for key, (accepted, apps, why) in c.NOT_SUPPORTED.items():
        shown = " or ".join(f"`{yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}`"
                            for v in accepted)
        lines.append(f"| `{key}` | {shown} | {', '.join(apps)} | {why} |")
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if docs/config.md differs from what would be written")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is stale: run python docs/gen_config_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
