"""L_rec (Eq. 3), L_con (Eq. 8) and R (Eq. 11-13) as single autograd nodes with closed-form gradients.

The plain formulas (models/losses.py) let autograd record every elementwise pass over the [B, items] logits and the
[2B, 2B] score matrices (offsets, log-softmax, max, minimum, relu, sums) and replay each one backwards. Here each
loss is one node: the forward computes the softmax once and keeps it (and, for R, which scores count), and the
backward scales that into d loss / d scores in one pass and multiplies it out through the matrix product that made
the scores. The values and gradients are the plain formulas' to float rounding, ties of R's min and max included
(tests/test_fused_losses.py, in float64). The run setting `fused_losses` chooses these or the plain formulas.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from mclrec.models.cpu_products import times_transposed


class _CrossEntropy(Function):
    """sum_b [logsumexp_j (h_b . w_j) - h_b . w_{t_b}] / divisor; the saved softmax is d loss / d logits up to the
    targets' -1, so the backward needs no log-softmax pass and no zero-filled one-hot gradient. The logits h W^T and
    the input gradient G W are oneDNN's products on x86 CPUs (cpu_products.times_transposed)."""

    @staticmethod
    def forward(ctx, h: Tensor, weights: Tensor, targets: Tensor, divisor: int) -> Tensor:
        logits = times_transposed(h, weights)
        target_logits = logits.gather(1, targets[:, None])
        maxes = logits.amax(dim=1, keepdim=True)
        exps = logits.sub_(maxes).exp_()  # in place: the logits are not needed once exponentiated
        sums = exps.sum(dim=1, keepdim=True)
        loss = (maxes + sums.log() - target_logits).sum() / divisor
        ctx.save_for_backward(h, weights, targets, exps, sums)
        ctx.divisor = divisor
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        h, weights, targets, exps, sums = ctx.saved_tensors
        scale = grad / ctx.divisor
        # the softmax, scaled, in place: writing a fresh [B, items] tensor costs 4x more here (a second backward
        # through the graph then finds its saved tensor modified and raises, as autograd does for in-place ops)
        grad_logits = exps.mul_(scale / sums)
        grad_logits.scatter_add_(1, targets[:, None], (-scale).expand(len(targets), 1))
        grad_h = times_transposed(grad_logits, weights.T) if ctx.needs_input_grad[0] else None
        grad_w = grad_logits.T @ h if ctx.needs_input_grad[1] else None
        return grad_h, grad_w, None, None


def cross_entropy(h: Tensor, item_weights: Tensor, targets: Tensor, total: int | None = None) -> Tensor:
    """F.cross_entropy(h @ item_weights.T, targets) (mean over rows; `total`: the rows' sum over `total`)."""
    return _CrossEntropy.apply(h, item_weights, targets, len(h) if total is None else total)


def _excluded(matrix: Tensor, fill: float, partners: bool) -> Tensor:
    """`matrix` with `fill` written (in place) on the diagonal, and with `partners` also on each row's partner."""
    half = len(matrix) // 2
    matrix.diagonal().fill_(fill)
    if partners:
        matrix.diagonal(half).fill_(fill)
        matrix.diagonal(-half).fill_(fill)
    return matrix


class _PairLosses(Function):
    """L_con and R of the 2B views z = cat(a, b), from sim = z z^T / temperature (pair_scores' matrix).

    L_con (Eq. 8) = mean_i [logsumexp_{j != i} sim_ij - sim_{i, partner(i)}]. R (Eq. 11-13), as
    losses.margin_from_scores: hardest_i = max over the 2B - 2 negatives, o_min / o_max the min / max of it and the
    positive (Eq. 12 row by row, as the published code),
    R = mean_i [pos_i - o_min_i]_+ + sum_i sum_negatives [o_max_i - sim_ij]_+ / (2B (2B - 2)).
    Gradients as autograd takes them through max (to the arg max), minimum / maximum (split in halves at a tie) and
    relu (none at 0).
    """

    @staticmethod
    def forward(ctx, z: Tensor, temperature: float, with_margin: bool) -> tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        n, half = len(z), len(z) // 2
        sim = z @ z.T if temperature == 1.0 else z @ z.T / temperature  # x / 1.0 is x: skip an [2B, 2B] pass
        rows = torch.arange(n, device=z.device)
        partner = (rows + half) % n
        pos = torch.cat([sim.diagonal(half), sim.diagonal(-half)])
        # sim becomes the softmax's scores in place; R's terms are taken from it before the exponentials
        scores = sim
        scores.diagonal().fill_(-torch.inf)  # the softmax of row i runs over every column but i
        ctx.temperature, ctx.with_margin = temperature, with_margin
        if with_margin:  # the hardest negative: the max over the columns but i and its partner
            scores.diagonal(half).fill_(-torch.inf)
            scores.diagonal(-half).fill_(-torch.inf)
            hardest, hardest_at = scores.max(dim=1)
            o_max = torch.maximum(pos, hardest)
            # o_max - (-inf) on the excluded columns is +inf there, then 0
            terms = _excluded(o_max[:, None] - scores, 0.0, partners=True).clamp_min_(0)
            scores.diagonal(half).copy_(pos[:half])
            scores.diagonal(-half).copy_(pos[half:])
            maxes = o_max[:, None]  # = scores.amax(dim=1): the max is exact
        else:
            maxes = scores.amax(dim=1, keepdim=True)
        exps = scores.sub_(maxes).exp_()
        sums = exps.sum(dim=1, keepdim=True)
        nce = (maxes.squeeze(1) + sums.log().squeeze(1) - pos).mean()
        if not with_margin:
            ctx.save_for_backward(z, exps, sums, rows, partner)
            return nce, torch.zeros((), dtype=z.dtype, device=z.device)
        reg = (pos - torch.minimum(pos, hardest)).clamp_min(0).mean() + terms.sum() / (n * (n - 2))
        counted = terms.sign_()  # 1 where a negative's term is positive (relu's gradient), else 0
        ctx.save_for_backward(z, exps, sums, rows, partner, counted, pos, hardest, hardest_at)
        return nce, reg

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_nce: Tensor | None, grad_reg: Tensor | None):
        if not ctx.needs_input_grad[0] or (grad_nce is None and grad_reg is None):
            return None, None, None
        z, exps, sums, rows, partner, *margin = ctx.saved_tensors
        n = len(z)
        grad_nce = torch.zeros((), dtype=z.dtype, device=z.device) if grad_nce is None else grad_nce
        grad_sim = exps.mul_(grad_nce / n / sums)  # the softmax, scaled, in place (as in _CrossEntropy)
        at_partner = (-grad_nce / n).expand(n)
        if ctx.with_margin and grad_reg is not None:
            counted, pos, hardest, hardest_at = margin
            per_term = grad_reg / (n * (n - 2))
            grad_sim.addcmul_(counted, -per_term)
            # [pos - o_min]_+ is pos - hardest where pos > hardest (else 0, and relu passes nothing at 0)
            above = (pos > hardest).to(z.dtype) * (grad_reg / n)
            # d R / d o_max_i = per_term x (row i's counted terms), split as torch.maximum splits it at a tie
            to_max = counted.sum(dim=1).to(z.dtype) * per_term
            tie = (pos == hardest).to(z.dtype) * 0.5
            at_partner = at_partner + above + to_max * ((pos > hardest).to(z.dtype) + tie)
            at_hardest = -above + to_max * ((hardest > pos).to(z.dtype) + tie)
            grad_sim.index_put_((rows, hardest_at), at_hardest, accumulate=True)
        grad_sim.index_put_((rows, partner), at_partner, accumulate=True)
        grad_z = (grad_sim + grad_sim.T) @ z  # sim = z z^T is symmetric: one product for both factors
        if ctx.temperature != 1.0:
            grad_z /= ctx.temperature
        return grad_z, None, None


def pair_losses(a: Tensor, b: Tensor, temperature: float = 1.0, with_margin: bool = True) -> tuple[Tensor, Tensor]:
    """(L_con(a, b), R(a, b)) as losses.info_nce and losses.margin_regulariser; R is 0 without `with_margin`."""
    return _PairLosses.apply(torch.cat([a, b]), temperature, with_margin)
