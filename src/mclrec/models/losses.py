"""Loss functions of MCLRec and its baselines (pure functions of tensors)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def contrast(a: Tensor, b: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """Positive and negative dot-product scores of the 2B views cat(a, b) (Eq. 8, Eq. 11).

    Row i's positive is its partner view (i + B or i - B); its negatives are the other 2B - 2 rows (self and
    partner excluded). Returns pos [2B] and neg [2B, 2B-2] (negatives in column order).
    """
    n = 2 * a.shape[0]
    z = torch.cat([a, b], dim=0)
    sim = z @ z.T / temperature
    rows = torch.arange(n, device=z.device)
    partner = (rows + n // 2) % n
    is_negative = torch.ones(n, n, dtype=torch.bool, device=z.device)
    is_negative[rows, rows] = False
    is_negative[rows, partner] = False
    return sim[rows, partner], sim[is_negative].view(n, n - 2)


def info_nce(a: Tensor, b: Tensor, temperature: float = 1.0) -> Tensor:
    """L_con(a, b) (Eq. 8): cross-entropy of each row's positive against its 2B-2 negatives, mean over 2B rows."""
    pos, neg = contrast(a, b, temperature)
    logits = torch.cat([pos[:, None], neg], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


def cl2_loss(h1: Tensor, h2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """L_cl2 = L_con(z1, z2) + L_con(h1, z2) + L_con(h2, z1) (Eq. 9)."""
    return info_nce(h1, z2) + info_nce(h2, z1) + info_nce(z1, z2)


def margin_regulariser(a: Tensor, b: Tensor) -> Tensor:
    """Contrastive regularisation R for one view pair (Eq. 11-13), as the published code computes it.

    sigma+, sigma- = contrast(a, b) (Eq. 11), row by row over the 2B rows: one positive and 2B-2 negatives each.
    Per row, o_min = min(min(sigma+), max(sigma-)) and o_max = max(min(sigma+), max(sigma-)) (Eq. 12); they are not
    detached, so gradients also flow through the selected min/max scores. R = mean over the 2B positives of
    [sigma+ - o_min]_+ plus mean over the 2B(2B-2) negatives of [o_max - sigma-]_+ (Eq. 13).
    """
    pos, neg = contrast(a, b)
    hardest_neg = neg.max(dim=1).values
    o_min = torch.minimum(pos, hardest_neg)
    o_max = torch.maximum(pos, hardest_neg)
    return F.relu(pos - o_min).mean() + F.relu(o_max[:, None] - neg).mean()


def reg_loss(h1: Tensor, h2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """R summed over the pairs of L_cl2: (h1, z2), (h2, z1), (z1, z2); unweighted (the caller applies gamma)."""
    return margin_regulariser(h1, z2) + margin_regulariser(h2, z1) + margin_regulariser(z1, z2)


def rec_ce_loss(h: Tensor, item_weights: Tensor, targets: Tensor) -> Tensor:
    """L_rec (Eq. 3): full-softmax cross-entropy of scores h @ item_weights^T, targets index rows of item_weights."""
    return F.cross_entropy(h @ item_weights.T, targets)


def bpr_loss(h: Tensor, item_weights: Tensor, targets: Tensor, negatives: Tensor) -> Tensor:
    """SASRec-BPR: mean of -log sigmoid(s_pos - s_neg) with one negative item per row."""
    pos = (h * item_weights[targets]).sum(dim=-1)
    neg = (h * item_weights[negatives]).sum(dim=-1)
    return -F.logsigmoid(pos - neg).mean()


def sample_negatives(targets: Tensor, n_items: int, generator: torch.Generator) -> Tensor:
    """One item per row, uniform over 1..n_items without the row's target (ids 1..n_items)."""
    draw = torch.randint(1, n_items, targets.shape, generator=generator, device=generator.device).to(targets.device)
    return draw + (draw >= targets).long()
