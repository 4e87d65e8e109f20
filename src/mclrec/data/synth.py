"""A synthetic `seqtxt` dataset with real sequential structure, for CI-sized end-to-end runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mclrec.io import atomic_open

ZIPF_EXPONENT = 0.6
FOLLOW_PROBABILITY = 0.5
NEXT_CLUSTERS = 3


@dataclass(frozen=True)
class World:
    """Items grouped into clusters; per-item successor; sparse cluster-to-cluster transitions."""

    cluster_of: np.ndarray
    item_cdf: np.ndarray
    item_order: np.ndarray
    block_end: np.ndarray
    successor: np.ndarray
    transition_cdf: np.ndarray


def generate_synthetic(
    path: Path,
    seed: int,
    n_users: int,
    n_items: int,
    n_clusters: int,
    mean_length: float,
    min_length: int,
    stay_probability: float,
) -> dict:
    """Write a seqtxt file of Markov-walk user sequences (ids 1..N by first appearance); return its sizes."""
    if not 1 <= n_clusters <= n_items or min_length < 1 or mean_length < min_length:
        raise ValueError("need 1 <= n_clusters <= n_items, min_length >= 1 and mean_length >= min_length")
    rng = np.random.default_rng(seed)
    world = _make_world(rng, n_items, n_clusters)
    extra_mean = mean_length - min_length
    lengths = min_length + rng.geometric(1.0 / (1.0 + extra_mean), size=n_users) - 1
    walks = _walk(rng, world, int(lengths.max()), n_users, stay_probability)
    mask = np.arange(walks.shape[1])[None, :] < lengths[:, None]
    codes, uniques = pd.factorize(walks[mask], sort=False)
    _write_seqtxt(Path(path), lengths, codes + 1)
    return {"n_users": n_users, "n_items": len(uniques), "n_interactions": int(lengths.sum())}


def _make_world(rng: np.random.Generator, n_items: int, n_clusters: int) -> World:
    """Random clusters with Zipf-like popularity, successors inside the cluster, sparse transitions."""
    item_order = rng.permutation(n_items)
    bounds = np.linspace(0, n_items, n_clusters + 1).round().astype(np.int64)
    sizes = np.diff(bounds)
    cluster_of = np.empty(n_items, dtype=np.int64)
    cluster_of[item_order] = np.repeat(np.arange(n_clusters), sizes)
    rank = np.arange(n_items) - np.repeat(bounds[:-1], sizes)
    item_cdf = _block_cdf(1.0 / (rank + 1.0) ** ZIPF_EXPONENT, bounds)
    size_of = np.repeat(sizes, sizes)
    shift = 1 + rng.integers(0, np.iinfo(np.int64).max, size=n_items) % np.maximum(size_of - 1, 1)
    partner = (rank + shift) % size_of
    successor = np.empty(n_items, dtype=np.int64)
    successor[item_order] = item_order[np.repeat(bounds[:-1], sizes) + partner]
    weights = np.zeros((n_clusters, n_clusters))
    for c in range(n_clusters):
        others = np.delete(np.arange(n_clusters), c)
        targets = rng.choice(others, size=min(NEXT_CLUSTERS, len(others)), replace=False)
        weights[c, targets] = rng.dirichlet(np.ones(len(targets)))
    weights[weights.sum(axis=1) == 0] = 1.0
    transition_cdf = np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)
    return World(cluster_of, item_cdf, item_order, bounds[1:], successor, transition_cdf)


def _block_cdf(weights: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Concatenated per-block CDFs shifted by block number: block c's values lie in (c, c+1]."""
    block = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
    cum = np.cumsum(weights)
    before = np.concatenate([[0.0], cum[bounds[1:-1] - 1]])
    totals = np.add.reduceat(weights, bounds[:-1])
    return block + (cum - before[block]) / totals[block]


def _draw_items(rng: np.random.Generator, world: World, clusters: np.ndarray) -> np.ndarray:
    """One popularity-weighted item from each given cluster."""
    slot = np.searchsorted(world.item_cdf, clusters + rng.random(len(clusters)), side="right")
    return world.item_order[np.minimum(slot, world.block_end[clusters] - 1)]


def _walk(rng: np.random.Generator, world: World, steps: int, n_users: int, stay: float) -> np.ndarray:
    """Item matrix [n_users, steps]: follow the last item's successor, or stay/jump cluster and draw."""
    n_clusters = len(world.transition_cdf)
    cluster = rng.integers(0, n_clusters, size=n_users)
    walks = np.empty((n_users, steps), dtype=np.int64)
    walks[:, 0] = _draw_items(rng, world, cluster)
    for t in range(1, steps):
        draw = rng.random(n_users)
        jump = np.minimum((world.transition_cdf[cluster] < draw[:, None]).sum(axis=1), n_clusters - 1)
        cluster = np.where(rng.random(n_users) < stay, cluster, jump)
        follow = rng.random(n_users) < FOLLOW_PROBABILITY
        walks[:, t] = np.where(follow, world.successor[walks[:, t - 1]], _draw_items(rng, world, cluster))
        cluster = world.cluster_of[walks[:, t]]
    return walks


def _write_seqtxt(path: Path, lengths: np.ndarray, items: np.ndarray) -> None:
    """Write `<user> <item> ...` lines, user k (1-based) owning the k-th run of `lengths` items."""
    users = np.arange(1, len(lengths) + 1)
    offsets = np.concatenate([[0], np.cumsum(lengths + 1)])
    tokens = np.empty(offsets[-1], dtype=np.int64)
    is_user = np.zeros(offsets[-1], dtype=bool)
    is_user[offsets[:-1]] = True
    tokens[is_user], tokens[~is_user] = users, items
    lists = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(tokens).cast(pa.string()))
    lines = pc.binary_join(lists, " ")
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("\n".join(lines.to_pylist()) + "\n")
