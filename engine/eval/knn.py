"""Cosine k-nearest-neighbour classification on pooled frozen features (the weighted vote of DINO's
kNN evaluation): each test sample's k most similar training samples vote for their label with weight
exp(similarity / temperature).

    acc, pred_M = knn_classify(train_MD, train_y, test_MD, test_y, k=20, temperature=0.07)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(train_MD, train_y, test_MD, *, k: int = 20, temperature: float = 0.07, num_classes=None,
                chunk: int = 1024) -> torch.Tensor:
    """Predicted labels [M_test]: features are L2-normalised, so the dot product is the cosine."""
    tr = F.normalize(train_MD.float(), dim=1)
    te = F.normalize(test_MD.float(), dim=1)
    C = num_classes if num_classes is not None else int(train_y.max()) + 1
    k = min(k, len(tr))
    preds = []
    for i in range(0, len(te), chunk):
        sim, idx = (te[i:i + chunk] @ tr.T).topk(k, dim=1)
        votes = torch.zeros(len(sim), C).scatter_add_(1, train_y[idx], (sim / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def knn_classify(train_MD, train_y, test_MD, test_y, *, k: int = 20, temperature: float = 0.07, num_classes=None):
    """(top-1 accuracy, predictions)."""
    pred = knn_predict(train_MD, train_y, test_MD, k=k, temperature=temperature, num_classes=num_classes)
    return float((pred == test_y).float().mean()), pred
