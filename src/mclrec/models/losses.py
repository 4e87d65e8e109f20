"""Loss functions of MCLRec and its baselines (pure functions of tensors).

Each batch loss is a mean over the batch's rows. When a batch is split over several processes
(training/distributed.py), each computes its share of that mean: the terms of its own `Rows` divided by the whole
batch's count, so the shares sum to the batch's loss (and their gradients to its gradient). The contrastive losses
then get every row of the batch (gathered from all processes) as columns and score only their own rows against
them. Without `rows` (one process) every function runs exactly the code it always ran.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mclrec.models.fused_losses import cross_entropy, pair_losses


@dataclass(frozen=True)
class Rows:
    """One process's share of a batch of `total` rows: rows start..stop-1 (possibly none)."""

    start: int
    stop: int
    total: int

    @property
    def count(self) -> int:
        return self.stop - self.start


def pair_scores(a: Tensor, b: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """Dot-product scores of the 2B views cat(a, b) (Eq. 8, Eq. 11): sim [2B, 2B], positives [2B], excluded [2B, 2B].

    Row i's positive is its partner view (i + B or i - B); its negatives are the other 2B - 2 columns, i.e. every
    column except those marked in `excluded` (itself and its partner).
    """
    half = a.shape[0]
    z = torch.cat([a, b], dim=0)
    sim = z @ z.T if temperature == 1.0 else z @ z.T / temperature  # x / 1.0 is x: skip an [2B, 2B] pass
    pos = torch.cat([sim.diagonal(half), sim.diagonal(-half)])
    itself = torch.eye(2 * half, dtype=torch.bool, device=z.device)
    return sim, pos, itself | itself.roll(half, dims=1)


def exclusion_offsets(excluded: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Additive constants for pair_scores' sim: -inf on the diagonal (self) and -inf on every excluded column, else 0.

    Adding 0 leaves a score bit-for-bit unchanged, so `sim + offset` equals a masked_fill in value and gradient while
    costing one pass forward and none backward.
    """
    itself = torch.eye(len(excluded), dtype=torch.bool, device=excluded.device)
    zeros = torch.zeros(excluded.shape, dtype=dtype, device=excluded.device)
    return zeros.masked_fill(itself, -torch.inf), zeros.masked_fill(excluded, -torch.inf)


def info_nce(a: Tensor, b: Tensor, temperature: float = 1.0, rows: Rows | None = None, fused: bool = False) -> Tensor:
    """L_con(a, b) (Eq. 8): cross-entropy of each row's positive against its 2B-2 negatives, mean over 2B rows (Eq. 8
    sums both directions of a pair; the mean over the 2B rows, as the published code takes it, is half that sum
    averaged over the B pairs).

    The softmax of row i runs over every column but i (its positive and negatives), so the loss is
    logsumexp over those columns minus the positive score. With `rows` (a and b hold the whole batch): the share of
    those rows of a and of b, their terms summed and divided by 2B. `fused` (one process only): the same loss as one
    autograd node with its gradient in closed form (fused_losses.pair_losses).
    """
    if fused and rows is None:
        return pair_losses(a, b, temperature, with_margin=False)[0]
    if rows is not None:
        sim, pos, own, partner = row_pair_scores(a, b, rows, temperature)
        return row_nce(sim, pos, row_offsets(sim, own, partner)[0])
    sim, pos, excluded = pair_scores(a, b, temperature)
    return nce_from_scores(sim, pos, exclusion_offsets(excluded, sim.dtype)[0])


def row_pair_scores(a: Tensor, b: Tensor, rows: Rows, temperature: float = 1.0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """pair_scores' rows of `rows` only: the 2n views of those rows in cat(a, b) against all 2B columns.

    Returns sim [2n, 2B], the positives [2n], and for each row its own column and its partner's column [2n].
    """
    half = a.shape[0]
    z = torch.cat([a, b], dim=0)
    local = torch.arange(rows.start, rows.stop, device=z.device)
    own, partner = torch.cat([local, local + half]), torch.cat([local + half, local])
    sim = z[own] @ z.T if temperature == 1.0 else z[own] @ z.T / temperature
    return sim, sim.gather(1, partner[:, None]).squeeze(1), own, partner


def row_offsets(sim: Tensor, own: Tensor, partner: Tensor) -> tuple[Tensor, Tensor]:
    """exclusion_offsets for row_pair_scores' rows: -inf at each row's own column, and at its own and partner's."""
    columns = torch.arange(sim.shape[1], device=sim.device)
    itself = columns == own[:, None]
    zeros = torch.zeros(sim.shape, dtype=sim.dtype, device=sim.device)
    return zeros.masked_fill(itself, -torch.inf), zeros.masked_fill(itself | (columns == partner[:, None]), -torch.inf)


def row_nce(sim: Tensor, pos: Tensor, self_offset: Tensor) -> Tensor:
    """nce_from_scores for a share of the rows: their terms summed, over the whole batch's 2B rows (sim's columns)."""
    return (torch.logsumexp(sim + self_offset, dim=1) - pos).sum() / sim.shape[1]


def nce_from_scores(sim: Tensor, pos: Tensor, self_offset: Tensor) -> Tensor:
    """info_nce given pair_scores' sim and positives and exclusion_offsets' diagonal offset."""
    return (torch.logsumexp(sim + self_offset, dim=1) - pos).mean()


def cl2_and_reg(h1: Tensor, h2: Tensor, z1: Tensor, z2: Tensor, with_reg: bool = True,
                rows: Rows | None = None, fused: bool = False) -> tuple[Tensor, Tensor | None]:
    """L_cl2 (Eq. 9) and, if asked, R summed over the same three pairs (h1, z2), (h2, z1), (z1, z2), as the published
    code does (the paper's Eq. 11 takes R's scores from (z1, z2) only).

    Each pair's score matrix is computed once and shared by both losses; the exclusion offsets by all three pairs.
    With `rows` (the tensors hold the whole batch): the share of those rows (see info_nce). `fused` (one process
    only): each pair's two losses from one autograd node with closed-form gradients (fused_losses.pair_losses).
    """
    if rows is not None:
        return _row_cl2_and_reg(h1, h2, z1, z2, with_reg, rows)
    if fused:
        pairs = [pair_losses(a, b, with_margin=with_reg) for a, b in ((h1, z2), (h2, z1), (z1, z2))]
        return sum(nce for nce, _ in pairs), (sum(reg for _, reg in pairs) if with_reg else None)
    pairs = [pair_scores(a, b) for a, b in ((h1, z2), (h2, z1), (z1, z2))]
    self_offset, excluded_offset = exclusion_offsets(pairs[0][2], pairs[0][0].dtype)
    cl2: Tensor | float = 0.0
    reg: Tensor | float = 0.0
    for sim, pos, _ in pairs:
        cl2 = cl2 + nce_from_scores(sim, pos, self_offset)
        if with_reg:
            reg = reg + margin_from_scores(sim, pos, excluded_offset)
    return cl2, (reg if with_reg else None)


def _row_cl2_and_reg(h1: Tensor, h2: Tensor, z1: Tensor, z2: Tensor, with_reg: bool,
                     rows: Rows) -> tuple[Tensor, Tensor | None]:
    """cl2_and_reg's share of `rows`."""
    pairs = [row_pair_scores(a, b, rows) for a, b in ((h1, z2), (h2, z1), (z1, z2))]
    sim, _, own, partner = pairs[0]
    self_offset, excluded_offset = row_offsets(sim, own, partner)
    cl2: Tensor | float = 0.0
    reg: Tensor | float = 0.0
    for sim, pos, _, _ in pairs:
        cl2 = cl2 + row_nce(sim, pos, self_offset)
        if with_reg:
            reg = reg + row_margin(sim, pos, excluded_offset)
    return cl2, (reg if with_reg else None)


def cl2_loss(h1: Tensor, h2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """L_cl2 = L_con(h1, z2) + L_con(h2, z1) + L_con(z1, z2) (Eq. 9)."""
    return cl2_and_reg(h1, h2, z1, z2, with_reg=False)[0]


def margin_regulariser(a: Tensor, b: Tensor) -> Tensor:
    """Contrastive regularisation R for one view pair (Eq. 11-13), as the published code computes it.

    sigma+, sigma- = pair_scores(a, b) (Eq. 11), row by row over the 2B rows: one positive and 2B-2 negatives each.
    Per row, o_min = min(min(sigma+), max(sigma-)) and o_max = max(min(sigma+), max(sigma-)): Eq. 12 taken row by
    row as the published code does (the paper's sets sigma+ and sigma- would give one o_min and o_max); they are not
    detached, so gradients also flow through the selected min/max scores. R = mean over the 2B positives of
    [sigma+ - o_min]_+ plus mean over the 2B(2B-2) negatives of [o_max - sigma-]_+ (Eq. 13).
    """
    sim, pos, excluded = pair_scores(a, b)
    return margin_from_scores(sim, pos, exclusion_offsets(excluded, sim.dtype)[1])


def margin_from_scores(sim: Tensor, pos: Tensor, excluded_offset: Tensor) -> Tensor:
    """margin_regulariser given pair_scores' sim and positives and exclusion_offsets' excluded-columns offset.

    Excluded columns become -inf for the hardest negative and +inf in [o_max - sigma]_+, where relu makes them 0.
    """
    n = len(sim)
    hardest_neg = (sim + excluded_offset).max(dim=1).values
    o_min = torch.minimum(pos, hardest_neg)
    o_max = torch.maximum(pos, hardest_neg)
    neg_terms = F.relu(o_max[:, None] - (sim - excluded_offset))
    return F.relu(pos - o_min).mean() + neg_terms.sum() / (n * (n - 2))


def row_margin(sim: Tensor, pos: Tensor, excluded_offset: Tensor) -> Tensor:
    """margin_from_scores for a share of the rows: each mean's terms of these rows, over the whole batch's count
    (2B positives, 2B(2B-2) negatives; 2B = sim's columns)."""
    n = sim.shape[1]
    hardest_neg = (sim + excluded_offset).max(dim=1).values
    o_min = torch.minimum(pos, hardest_neg)
    o_max = torch.maximum(pos, hardest_neg)
    neg_terms = F.relu(o_max[:, None] - (sim - excluded_offset))
    return F.relu(pos - o_min).sum() / n + neg_terms.sum() / (n * (n - 2))


def reg_loss(h1: Tensor, h2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """R (Eq. 11-13) summed over the pairs of L_cl2: (h1, z2), (h2, z1), (z1, z2), as the published code does;
    unweighted (the caller applies the weight)."""
    return margin_regulariser(h1, z2) + margin_regulariser(h2, z1) + margin_regulariser(z1, z2)


LOGITS_BUDGET = 2**27  # logits held at once by L_rec (512 MiB of float32); larger catalogs go chunk by chunk


def rec_ce_loss(h: Tensor, item_weights: Tensor, targets: Tensor, budget: int = LOGITS_BUDGET,
                total: int | None = None, fused: bool = False) -> Tensor:
    """L_rec (Eq. 3): full-softmax cross-entropy of scores h @ item_weights^T, targets index rows of item_weights.

    When the [batch, items] logits would exceed `budget` values (catalogs of 10^5-10^6 items), they are computed
    chunk by chunk over the items, forward and backward (chunked_cross_entropy), never all at once.
    total: h holds a share of a batch of `total` rows; the rows' sum over `total` is returned (default: the mean).
    fused: within the budget, one autograd node with the gradient in closed form (fused_losses.cross_entropy).
    """
    if h.shape[0] * item_weights.shape[0] <= budget:
        if fused:
            return cross_entropy(h, item_weights, targets, total)
        if total is not None:
            return F.cross_entropy(h @ item_weights.T, targets, reduction="sum") / total
        return F.cross_entropy(h @ item_weights.T, targets)
    return chunked_cross_entropy(h, item_weights, targets, max(1, budget // h.shape[0]), total)


class _ChunkedCrossEntropy(torch.autograd.Function):
    """mean_b [logsumexp_j (h_b . w_j) - h_b . w_{t_b}], with the logits made and dropped one item chunk at a time."""

    @staticmethod
    def forward(ctx, h: Tensor, weights: Tensor, targets: Tensor, chunk: int, total: int | None) -> Tensor:
        lse = torch.stack([torch.logsumexp(h @ w.T, dim=1) for w in weights.split(chunk)]).logsumexp(dim=0)
        target_logits = (h * weights[targets]).sum(dim=1)
        ctx.save_for_backward(h, weights, targets, lse)
        ctx.chunk = chunk
        ctx.total = total
        if total is not None:
            return (lse - target_logits).sum() / total
        return (lse - target_logits).mean()

    @staticmethod
    def backward(ctx, grad: Tensor):
        h, weights, targets, lse = ctx.saved_tensors
        scale = grad / (h.shape[0] if ctx.total is None else ctx.total)
        grad_h = torch.zeros_like(h)
        grad_w = torch.zeros_like(weights)
        for start in range(0, weights.shape[0], ctx.chunk):
            w = weights[start:start + ctx.chunk]
            probs = torch.exp(h @ w.T - lse[:, None]) * scale  # d loss / d logits of this chunk, softmax part
            grad_h += probs @ w
            grad_w[start:start + ctx.chunk] = probs.T @ h
        # the target part of d loss / d logits: -1 at each row's target
        grad_h -= scale * weights[targets]
        grad_w.index_add_(0, targets, -scale * h)
        return grad_h, grad_w, None, None, None


def chunked_cross_entropy(h: Tensor, item_weights: Tensor, targets: Tensor, chunk: int,
                          total: int | None = None) -> Tensor:
    """F.cross_entropy(h @ item_weights.T, targets) with at most `chunk` items' logits at a time (float tolerance);
    `total`: as in rec_ce_loss."""
    return _ChunkedCrossEntropy.apply(h, item_weights, targets, chunk, total)


def bpr_loss(h: Tensor, item_weights: Tensor, targets: Tensor, negatives: Tensor,
             total: int | None = None) -> Tensor:
    """SASRec-BPR: mean of -log sigmoid(s_pos - s_neg) with one negative item per row (`total`: as in rec_ce_loss)."""
    pos = (h * item_weights[targets]).sum(dim=-1)
    neg = (h * item_weights[negatives]).sum(dim=-1)
    if total is not None:
        return -F.logsigmoid(pos - neg).sum() / total
    return -F.logsigmoid(pos - neg).mean()


def bce_loss(states: Tensor, item_weights: Tensor, positives: Tensor, negatives: Tensor,
             positions: Tensor | None = None) -> Tensor:
    """The original SASRec objective (Kang & McAuley 2018, Eq. 6): at every position t with positives[b, t] != 0,
    -log sigmoid(s_pos) - log(1 - sigmoid(s_neg)) for the next item and one negative; mean over those positions.

    states [B, L, H] are the encoder outputs at every position; positives/negatives [B, L] index item_weights.
    positions: the count the mean divides by when these rows are a share of a batch (that batch's positions).
    """
    target = positives != 0
    pos = (states * item_weights[positives]).sum(dim=-1)
    neg = (states * item_weights[negatives]).sum(dim=-1)
    per_position = -(F.logsigmoid(pos) + F.logsigmoid(-neg))  # log(1 - sigmoid(x)) = logsigmoid(-x)
    return per_position[target].sum() / (target.sum() if positions is None else positions)


def sample_negatives(targets: Tensor, n_items: int, generator: torch.Generator, rows: Rows | None = None) -> Tensor:
    """One item per row, uniform over 1..n_items without the row's target (ids 1..n_items).

    rows: `targets` are these rows of a batch; the whole batch's items are drawn (every process draws the same, as
    one process would) and these rows' kept.
    """
    if rows is not None:
        draw = torch.randint(1, n_items, (rows.total,), generator=generator, device=generator.device)
        draw = draw[rows.start:rows.stop].to(targets.device)
        return draw + (draw >= targets).long()
    draw = torch.randint(1, n_items, targets.shape, generator=generator, device=generator.device).to(targets.device)
    return draw + (draw >= targets).long()
