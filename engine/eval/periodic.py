"""Evaluation during training (`meta.eval_freq`): a cheap frozen probe of the target encoder every N steps.

    probe = PeriodicProbe.from_config(cfg)      # None when meta.eval_freq is 0 or there is no val set
    row.update(probe.maybe(step, model.target_encoder))   # {} or {"eval_knn_acc": .., "eval_linear_acc": ..}

The probe reads a fixed subset of the labelled validation set (`data.val_datasets`, the first
`meta.eval_samples` clips, centre-cropped): pooled target-encoder features of its even-numbered clips
are the reference set, the odd-numbered ones are classified by cosine kNN (k=20, T=0.07) and by the
linear probe (engine.eval.probe.train_linear_probe). It draws from no global random generator (torch,
numpy, Python): a run with it takes exactly the steps a run without it takes, and resumes the same.
"""
from __future__ import annotations

import random

import numpy as np
import torch


class PeriodicProbe:
    def __init__(self, cfg, freq: int, num_samples: int):
        self.cfg, self.freq, self.num_samples = cfg, int(freq), int(num_samples)
        self._dataset = None

    @classmethod
    def from_config(cls, cfg):
        m = cfg.meta
        if not m.eval_freq or not cfg.data.val_datasets:
            return None
        return cls(cfg, m.eval_freq, m.eval_samples)

    def dataset(self):
        if self._dataset is None:
            from engine.builders import build_dataset
            ds = build_dataset(self.cfg, train=False, index_files=self.cfg.data.val_datasets)
            self._dataset = _First(ds, min(self.num_samples, len(ds)))
        return self._dataset

    def maybe(self, step: int, encoder) -> dict:
        """The probe's metrics when `step` (optimizer steps done) is a multiple of eval_freq, else {}."""
        if step % self.freq:
            return {}
        return self(encoder)

    def __call__(self, encoder) -> dict:
        from engine.eval.knn import knn_classify
        from engine.eval.probe import extract_features, train_linear_probe
        np_state, py_state = np.random.get_state(), random.getstate()
        was_training = encoder.training
        try:
            with torch.random.fork_rng(devices=[]):
                feats_MND, y = extract_features(encoder, self.dataset(), batch_size=8, seed=self.cfg.meta.seed)
            x_MD = feats_MND.mean(1)
            tr, te = slice(0, None, 2), slice(1, None, 2)
            if len(y[te]) == 0 or len(set(y[tr].tolist())) < 2:
                return {}
            knn, _ = knn_classify(x_MD[tr], y[tr], x_MD[te], y[te], k=20, temperature=0.07,
                                  num_classes=int(y.max()) + 1)
            lin = train_linear_probe(feats_MND[tr], y[tr], feats_MND[te], y[te], int(y.max()) + 1)
            return {"eval_knn_acc": knn, "eval_linear_acc": lin["val_acc"]}
        finally:
            encoder.train(was_training)
            np.random.set_state(np_state)
            random.setstate(py_state)


class _First(torch.utils.data.Dataset):
    """The first n items of an engine dataset, still keyed (index, seed)."""

    def __init__(self, dataset, n: int):
        self.dataset, self.n = dataset, n

    def __len__(self):
        return self.n

    def __getitem__(self, key):
        return self.dataset[key]
