"""Strict state-dict loading: every mismatch between a checkpoint's entries and a module, in one error.

    problems = []
    sd = match_state(encoder, sd, "encoder", problems)    # one line per missing / unexpected / mis-shaped key
    if problems:
        raise ReferenceCheckpointError(path, problems)
    encoder.load_state_dict(sd)
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import nn


class ReferenceCheckpointError(ValueError):
    """A checkpoint does not fit the models its config describes; `problems` lists every mismatch."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = list(problems)
        lines = "\n  ".join(self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s) loading the reference checkpoint:\n  {lines}")


def match_state(module: nn.Module, sd: Mapping, part: str, problems: list[str], ignore: Iterable[str] = ()) -> dict:
    """Check sd against the module's own state_dict: every key present, none extra, shapes equal.
    Appends one line per problem; returns the entries to load."""
    own = module.state_dict()
    ignore = set(ignore)
    for k in sorted(set(own) - set(sd)):
        problems.append(f"{part}: missing key {k!r} (shape {tuple(own[k].shape)})")
    for k in sorted(set(sd) - set(own) - ignore):
        shape = tuple(sd[k].shape) if torch.is_tensor(sd[k]) else type(sd[k]).__name__
        problems.append(f"{part}: unexpected key {k!r} (shape {shape})")
    for k in sorted(set(sd) & set(own)):
        v = sd[k]
        if not torch.is_tensor(v):
            problems.append(f"{part}: key {k!r} holds a {type(v).__name__}, not a tensor")
        elif tuple(v.shape) != tuple(own[k].shape):
            problems.append(f"{part}: key {k!r} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
    return {k: v for k, v in sd.items() if k in own}
