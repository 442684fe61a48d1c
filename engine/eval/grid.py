"""A grid of attentive probes trained in one pass over frozen features, as V-JEPA 2's evaluation does:
one AttentiveClassifier per (lr, weight decay) setting, each with its own AdamW and schedules, all fed
the same batches; every epoch each is scored on the test set and the best is reported.

    result = train_grid(train, val, heads=ec.heads, embed_dim=192, num_heads=3, num_classes=6,
                        depth=1, layout="vjepa", epochs=20, batch_size=16)
    result["best"]["val_acc"], result["heads"][i]["val_acc"]   # per epoch

As in the reference: AdamW with no weight decay on biases and 1-D parameters, a warm-up-then-cosine
learning rate and a cosine weight decay per optimizer step, cross-entropy on each training clip (one
per segment without attend_across_segments), and at test time the softmax averaged over the views
(and segments). Features are used as they are (the reference normalises nothing).
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from engine.eval.attentive import AttentiveClassifier
from engine.core.schedules import Schedules, apply_to_optimizer
from engine.core.step import param_groups


def _inputs(x_BSND, attend_across_segments: bool) -> list[torch.Tensor]:
    """The classifier's inputs for one view: [B, S*N, D] (segments attended together) or S of [B, N, D]."""
    if attend_across_segments:
        return [x_BSND.flatten(1, 2)]
    return list(x_BSND.unbind(1))


def head_schedules(h, ipe: int, epochs: int) -> Schedules:
    return Schedules(start_lr=h.start_lr, lr_ref=h.lr, final_lr=h.final_lr, warmup_steps=int(h.warmup * ipe),
                     total_steps=max(1, epochs * ipe), wd_ref=h.weight_decay, final_wd=h.final_weight_decay,
                     ema_start=1.0, ema_end=1.0)


@torch.no_grad()
def evaluate(classifiers, source, attend_across_segments: bool, batch_size: int = 64, dtype=torch.float32):
    """Top-1 accuracy of each classifier: softmax averaged over views (and segments)."""
    correct = [0] * len(classifiers)
    n = 0
    for c in classifiers:
        c.eval()
    for x, y in source.batches(epoch=0, batch_size=batch_size):
        with _autocast(dtype):
            for k, c in enumerate(classifiers):
                probs = sum(F.softmax(c(inp).float(), dim=1) for v in range(x.shape[1])
                            for inp in _inputs(x[:, v], attend_across_segments))
                correct[k] += int((probs.argmax(1) == y).sum())
        n += len(y)
    return [c / max(1, n) for c in correct]


def _autocast(dtype):
    return torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()


def train_grid(train, val, *, heads, embed_dim: int, num_heads: int, num_classes: int, depth: int = 1,
               layout: str = "vjepa2", epochs: int = 20, batch_size: int = 16, attend_across_segments: bool = True,
               dtype=torch.float32, seed: int = 0, log=None) -> dict:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        classifiers = [AttentiveClassifier(embed_dim, num_heads, num_classes, depth=depth, layout=layout)
                       for _ in heads]
    opts = [torch.optim.AdamW(param_groups([c])) for c in classifiers]
    ipe = math.ceil(len(train) / batch_size)
    scheds = [head_schedules(h, ipe, epochs) for h in heads]
    hist = [{"train_acc": [], "val_acc": []} for _ in heads]
    step = 0
    for epoch in range(epochs):
        for c in classifiers:
            c.train()
        correct, seen = [0] * len(heads), 0
        for x, y in train.batches(epoch=epoch, batch_size=batch_size, shuffle=True, seed=seed):
            x = x[:, 0]   # training: one view
            for k, (c, opt, s) in enumerate(zip(classifiers, opts, scheds)):
                apply_to_optimizer(opt, s.lr(step), s.wd(step))
                with _autocast(dtype):
                    logits = [c(inp).float() for inp in _inputs(x, attend_across_segments)]
                loss = sum(F.cross_entropy(lg, y) for lg in logits)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    probs = sum(F.softmax(lg, 1) for lg in logits)
                    correct[k] += int((probs.argmax(1) == y).sum())
            seen += len(y)
            step += 1
        val_acc = evaluate(classifiers, val, attend_across_segments, dtype=dtype)
        for k in range(len(heads)):
            hist[k]["train_acc"].append(correct[k] / max(1, seen))
            hist[k]["val_acc"].append(val_acc[k])
        if log is not None:
            log(epoch, hist)
    results = [{"setting": vars(h).copy(), "train_acc": hist[k]["train_acc"], "val_acc": hist[k]["val_acc"]}
               for k, h in enumerate(heads)]
    best = max(range(len(heads)), key=lambda k: hist[k]["val_acc"][-1])
    return {"heads": results, "best": {"index": best, "setting": results[best]["setting"],
                                       "val_acc": hist[best]["val_acc"][-1],
                                       "train_acc": hist[best]["train_acc"][-1]},
            "classifiers": classifiers}
