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
ROWS_PER_BLOCK = 256  # transition rows made dense at once when normalising them (memory: 256 x n_clusters)


@dataclass(frozen=True)
class World:
    """Items grouped into clusters; per-item successor; sparse cluster-to-cluster transitions.

    A cluster's transition CDF over all clusters is a step function, stored sparsely: jump_to[c] holds its target
    clusters in increasing order and then n_clusters, jump_cdf[c] the CDF's value from each target on (0 before).
    """

    cluster_of: np.ndarray
    item_cdf: np.ndarray
    item_order: np.ndarray
    block_end: np.ndarray
    successor: np.ndarray
    jump_to: np.ndarray
    jump_cdf: np.ndarray


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
    jump_to, jump_cdf = _transitions(rng, n_clusters)
    return World(cluster_of, item_cdf, item_order, bounds[1:], successor, jump_to, jump_cdf)


def _transitions(rng: np.random.Generator, n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """Each cluster's NEXT_CLUSTERS random other clusters with Dirichlet weights, as (jump_to, jump_cdf).

    The draws come one cluster at a time, as they always have, so a seed gives the same dataset as before the
    CDFs were stored sparsely (a dense n_clusters^2 table did not fit at 10^6 items).
    """
    k = min(NEXT_CLUSTERS, n_clusters - 1)
    targets = np.empty((n_clusters, k), dtype=np.int64)
    weights = np.empty((n_clusters, k))
    for c in range(n_clusters):
        # Drawing positions among the n_clusters - 1 others takes the same random numbers as drawing from the
        # array of the others did; position p is cluster p, or p + 1 from c on.
        picks = rng.choice(n_clusters - 1, size=k, replace=False)
        targets[c] = picks + (picks >= c)
        weights[c] = rng.dirichlet(np.ones(k))
    order = np.argsort(targets, axis=1, kind="stable")
    targets, weights = np.take_along_axis(targets, order, 1), np.take_along_axis(weights, order, 1)
    jump_to = np.concatenate([targets, np.full((n_clusters, 1), n_clusters)], axis=1)
    jump_cdf = np.cumsum(weights / _row_sums(targets, weights, n_clusters)[:, None], axis=1)
    return jump_to, jump_cdf


def _row_sums(targets: np.ndarray, weights: np.ndarray, n_clusters: int) -> np.ndarray:
    """Sums of the dense transition rows (a row without targets counts as all ones).

    Summed over dense rows, a block at a time, because numpy's pairwise summation makes a float sum depend on
    where the non-zero entries lie; the zeros change nothing in the CDF's cumulative sums, so those stay sparse.
    n_clusters^2 additions: about a second at 25,000 clusters.
    """
    sums = np.empty(n_clusters)
    for start in range(0, n_clusters, ROWS_PER_BLOCK):
        stop = min(start + ROWS_PER_BLOCK, n_clusters)
        dense = np.zeros((stop - start, n_clusters))
        np.put_along_axis(dense, targets[start:stop], weights[start:stop], 1)
        dense[dense.sum(axis=1) == 0] = 1.0
        sums[start:stop] = dense.sum(axis=1)
    return sums


def _block_cdf(weights: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Concatenated per-block CDFs shifted by block number: block c's values lie in (c, c+1]."""
    block = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
    cum = np.cumsum(weights)
    before = np.concatenate([[0.0], cum[bounds[1:-1] - 1]])
    totals = np.add.reduceat(weights, bounds[:-1])
    return block + (cum - before[block]) / totals[block]


def _draw_items(rng: np.random.Generator, world: World, clusters: np.ndarray) -> np.ndarray:
    """One popularity-weighted item from each given cluster."""
    keys = clusters + rng.random(len(clusters))
    # Searched in sorted order, where each search starts from the previous one's slot: 2-3x faster at 10^6 items.
    order = np.argsort(keys)
    slot = np.empty(len(keys), dtype=np.int64)
    slot[order] = np.searchsorted(world.item_cdf, keys[order], side="right")
    return world.item_order[np.minimum(slot, world.block_end[clusters] - 1)]


def _walk(rng: np.random.Generator, world: World, steps: int, n_users: int, stay: float) -> np.ndarray:
    """Item matrix [n_users, steps]: follow the last item's successor, or stay/jump cluster and draw."""
    n_clusters = len(world.jump_to)
    cluster = rng.integers(0, n_clusters, size=n_users)
    walks = np.empty((n_users, steps), dtype=np.int64)
    walks[:, 0] = _draw_items(rng, world, cluster)
    for t in range(1, steps):
        jump = _jump(world, cluster, rng.random(n_users))
        cluster = np.where(rng.random(n_users) < stay, cluster, jump)
        follow = rng.random(n_users) < FOLLOW_PROBABILITY
        walks[:, t] = np.where(follow, world.successor[walks[:, t - 1]], _draw_items(rng, world, cluster))
        cluster = world.cluster_of[walks[:, t]]
    return walks


def _jump(world: World, cluster: np.ndarray, draw: np.ndarray) -> np.ndarray:
    """Inverse-CDF jump: how many entries of each cluster's dense transition CDF lie below its draw (capped).

    Below a draw > 0 lie the zeros before the first target and the steps whose value is below the draw, i.e.
    everything before the first target whose value reaches it; below a draw of 0 lies nothing.
    """
    below = (world.jump_cdf[cluster] < draw[:, None]).sum(axis=1)
    first_reached = world.jump_to[cluster, below]
    return np.minimum(np.where(draw > 0, first_reached, 0), len(world.jump_to) - 1)


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
