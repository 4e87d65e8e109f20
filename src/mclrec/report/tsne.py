"""Figures 2 and 5: t-SNE maps of the learned views of a fixed, seeded sample of users (library t-SNE).

Fig. 2: the model-augmented views z1 = w1(h1), z2 = w2(h2) of MCLRec with and without the regulariser R.
Fig. 5: the data-augmented views h1, h2 of MCLRec (meta) and MCLRec-J (joint). Each user's two views are one
positive pair and share a colour; a good map puts pairs together and spreads users apart.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from mclrec.data.processed import ProcessedData
from mclrec.models.augment import two_views
from mclrec.data.instances import eval_instances
from mclrec.checkpoint import load_checkpoint
from mclrec.models.parts import build_parts
from mclrec.run_config import RunConfig
from mclrec.training.objectives import mask_id

VIEWS = {"z": ("z1", "z2"), "h": ("h1", "h2")}


def sample_users(n_users: int, n: int, seed: int) -> np.ndarray:
    """`n` distinct row indices of the test split, the same for every model given the seed."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_users, size=min(n, n_users), replace=False))


@torch.no_grad()
def view_embeddings(checkpoint: Path, data: ProcessedData, rows: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """h1, h2 (encoder on two augmented views of each sampled test input) and, with augmenters, z1, z2; eval mode."""
    ckpt = load_checkpoint(checkpoint)
    cfg = RunConfig.of(ckpt["config"])
    parts = build_parts(cfg, ckpt["n_items"])
    for name, module in parts.modules().items():
        module.load_state_dict(ckpt["modules"][name])
    parts.train(False)
    test = eval_instances(data, "test", torch.device("cpu"))
    seq, lengths, _ = test.rows(torch.as_tensor(rows))
    generator = torch.Generator().manual_seed(seed)
    v1, l1, v2, l2 = two_views(seq, lengths, generator, cfg.crop_ratio, cfg.mask_ratio, cfg.reorder_ratio,
                               mask_id(cfg, ckpt["n_items"]))
    h1, h2 = parts.encoder(v1, l1), parts.encoder(v2, l2)
    views = {"h1": h1.numpy(), "h2": h2.numpy()}
    if parts.augmenter1 is not None:
        views.update(z1=parts.augmenter1(h1).numpy(), z2=parts.augmenter2(h2).numpy())
    return views


def embed_2d(points: np.ndarray, seed: int) -> np.ndarray:
    """scikit-learn's t-SNE of `points` into 2-D (perplexity capped for small samples), seeded."""
    from sklearn.manifold import TSNE

    perplexity = min(30.0, (len(points) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)


def plot_tsne(panels: Mapping[str, dict[str, np.ndarray] | None], kind: str, path: str | os.PathLike,
              title: str, seed: int = 0) -> None:
    """One panel per model: the t-SNE map of its two views of `kind` ("z" or "h"), pairs in one colour."""
    from mclrec.report.figures import _figure, plot_no_runs, save_png

    present = {label: views for label, views in panels.items() if views and VIEWS[kind][0] in views}
    if not present:
        plot_no_runs(path, title)
        return
    fig, axes = _figure(len(present), width=4.2, height=4.0)
    first, second = VIEWS[kind]
    for ax, (label, views) in zip(axes, present.items()):
        n = len(views[first])
        xy = embed_2d(np.concatenate([views[first], views[second]]), seed)
        colours = np.tile(np.arange(n), 2)
        ax.scatter(xy[:n, 0], xy[:n, 1], c=colours[:n], cmap="hsv", marker="o", s=18, label=first)
        ax.scatter(xy[n:, 0], xy[n:, 1], c=colours[n:], cmap="hsv", marker="^", s=18, label=second)
        ax.set(title=label, xticks=[], yticks=[])
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title)
    save_png(fig, path)
