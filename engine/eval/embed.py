"""Pooled embeddings of a data set, with each sample's metadata, as a HiPlot page and a 2-D PCA plot.

    rows = embedding_rows(x_MD, labels, paths, clip_starts, num_components=8)
    write_hiplot(rows, "embed.html")       # a self-contained page: open it in a browser, no server
    write_pca_png(x_MD, labels, "embed_pca.png")

Each row holds the sample's label, path and clip start (frame index) beside the first principal
components of the pooled features (PCA over the data set, computed here), so HiPlot's parallel
coordinates show which directions separate which classes.
"""
from __future__ import annotations

from pathlib import Path

import torch


def pca(x_MD: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(projections [M, k], explained variance ratio [k]) of the centred features."""
    x = x_MD.double() - x_MD.double().mean(0)
    k = max(1, min(k, *x.shape))
    _, s, v = torch.linalg.svd(x, full_matrices=False)
    var = s.pow(2)
    return (x @ v[:k].T).float(), (var[:k] / var.sum().clamp_min(1e-30)).float()


def embedding_rows(x_MD, labels, paths, clip_starts=None, num_components: int = 8) -> list[dict]:
    proj, _ = pca(x_MD, num_components)
    rows = []
    for i in range(len(x_MD)):
        row = {"label": int(labels[i]), "path": str(paths[i]),
               "clip_start": int(clip_starts[i]) if clip_starts is not None else 0}
        row.update({f"pc{j + 1}": round(float(proj[i, j]), 6) for j in range(proj.shape[1])})
        rows.append(row)
    return rows


def write_hiplot(rows: list[dict], path) -> Path:
    import hiplot as hip
    from engine.core.io import atomic_write_text
    exp = hip.Experiment.from_iterable(rows)
    exp.colorby = "label"
    path = Path(path)
    atomic_write_text(path, exp.to_html())
    return path


def write_pca_png(x_MD, labels, path, title: str = "pooled features, first two principal components") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    proj, ratio = pca(x_MD, 2)
    if proj.shape[1] < 2:
        proj = torch.cat([proj, torch.zeros_like(proj)], 1)
        ratio = torch.cat([ratio, torch.zeros(1)])
    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=110)
    sc = ax.scatter(proj[:, 0], proj[:, 1], c=[int(v) for v in labels], cmap="tab10", s=12)
    ax.set_xlabel(f"PC1 ({float(ratio[0]):.0%} of variance)")
    ax.set_ylabel(f"PC2 ({float(ratio[1]):.0%} of variance)")
    ax.set_title(title, fontsize=9)
    ax.legend(*sc.legend_elements(), title="label", fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path
