"""The four models as one set of parts (encoder, optional augmenters) and their losses.

sasrec:  L = L_rec                                   (ce, or bpr with one sampled negative; bce: the original
                                                     SASRec objective at every position of a user's sequence)
cl4srec: L = L_rec + lambda_cl1 * info_nce(h1, h2)   (two stochastic views)
duorec:  L = L_rec + lambda_sem * info_nce(h', hs)   (dropout view, same-target positive)
mclrec:  L0 = L_rec + lambda_cl1 * L_cl1 + beta * (L_cl2 + reg_weight * R)       (Eq. 14: the paper's
         gamma R is beta * reg_weight * R, its gamma = 0.1 beta of Sec. 4.1.4 with reg_weight 0.1)
         L1 = L_cl2 + reg_weight * R  (Eq. 15, the augmenters' loss; reg_weight as the published code, not 0.1 beta)

A batch split over several processes (Batch.shard set) gives each its share of these losses (models/losses.py):
the contrastive terms see the whole batch's encodings, gathered with their gradients (training/shards.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from mclrec.models.augment import two_views
from mclrec.models.encoder import SASRecEncoder
from mclrec.models.fast_encoding import encode
from mclrec.models.packed_encoding import PackedInputs, encode_packed, encode_packed_inputs, packed_inputs
from mclrec.models.parts import ModelParts, build_parts, uses_augmenters  # noqa: F401 (build_parts: re-exported)
from mclrec.run_config import RunConfig
from mclrec.models.losses import Rows, bce_loss, bpr_loss, cl2_and_reg, info_nce, rec_ce_loss, sample_negatives
from mclrec.training.shards import Shard, gather_rows


@dataclass
class Batch:
    """One training batch on the device: inputs, targets and the extra views the model needs."""

    seq: Tensor
    lengths: Tensor
    targets: Tensor
    view1: Optional[tuple[Tensor, Tensor]] = None
    view2: Optional[tuple[Tensor, Tensor]] = None
    partner: Optional[tuple[Tensor, Tensor]] = None
    negatives: Optional[Tensor] = None  # loss bce: one negative item per position, [B, L]
    shard: Shard | None = None  # these are one process's rows of a batch split over several processes
    positions: Tensor | None = None  # loss bce on a shard: the whole batch's count of target positions
    # the PackedInputs of this batch's encoder calls (packed_tokens), made once per batch: MCLRec's step 3
    # encodes step 1's inputs again; keyed by the views' tensors, which the batch holds (encode_views)
    packed: dict[tuple[int, ...], PackedInputs] = field(default_factory=dict, repr=False, compare=False)


def mask_id(cfg: RunConfig, n_items: int) -> int:
    """The id the mask augmentation writes: 0 (padding, MCLRec's code) or the mask token n_items + 1 (CL4SRec's)."""
    return n_items + 1 if cfg.mask_item == "token" else 0


def make_batch(cfg: RunConfig, seq: Tensor, lengths: Tensor, targets: Tensor, generator: torch.Generator,
               partner: Optional[tuple[Tensor, Tensor]] = None, negatives: Optional[Tensor] = None,
               masked_id: int = 0) -> Batch:
    """Add the stochastic views (cl4srec, mclrec; masked items become `masked_id`) or the same-target partner
    (duorec); `negatives` are the bce loss's sampled items."""
    batch = Batch(seq, lengths, targets, partner=partner, negatives=negatives)
    if cfg.model in ("cl4srec", "mclrec"):
        v1, l1, v2, l2 = two_views(seq, lengths, generator, cfg.crop_ratio, cfg.mask_ratio, cfg.reorder_ratio,
                                   masked_id)
        batch.view1, batch.view2 = (v1, l1), (v2, l2)
    return batch


def _rec_loss(cfg: RunConfig, encoder: SASRecEncoder, h: Tensor, targets: Tensor, generator: torch.Generator,
              shard: Shard | None = None) -> Tensor:
    """L_rec: full-softmax cross-entropy, or BPR against one uniformly sampled negative (on a shard: its share)."""
    if shard is None:
        if cfg.loss == "bpr":
            negatives = sample_negatives(targets, encoder.n_items, generator)
            return bpr_loss(h, encoder.item_weights(), targets, negatives)
        return rec_ce_loss(h, encoder.item_weights(), targets, fused=cfg.fused_losses)
    rows = shard.rows
    if cfg.loss == "bpr":
        negatives = sample_negatives(targets, encoder.n_items, generator, rows)
        return bpr_loss(h, encoder.item_weights(), targets, negatives, total=rows.total)
    return rec_ce_loss(h, encoder.item_weights(), targets, total=rows.total, fused=cfg.fused_losses)


def _contrast(cfg: RunConfig, a: Tensor, b: Tensor, shard: Shard | None) -> Tensor:
    """info_nce(a, b), or on a shard its share against the whole batch's rows."""
    if shard is None:
        return info_nce(a, b, cfg.temperature, fused=cfg.fused_losses)
    return info_nce(*gather_rows(shard, a, b), cfg.temperature, shard.rows)


def encode_views(cfg: RunConfig, encoder: SASRecEncoder, *views: tuple[Tensor, Tensor],
                 packed: dict[tuple[int, ...], PackedInputs] | None = None) -> list[Tensor]:
    """Encode several (seq, lengths) batches; with `batch_views` in one call on their concatenation (right-padded).

    Rows never interact in the encoder, so one call gives each row the same function as separate calls; only the
    order in which dropout masks are drawn differs (masks are i.i.d., so the training process has the same law).
    Views without rows (a process that has none of a small last batch, training/distributed.py) encode to [0, H].
    packed (Batch.packed): where the packed inputs of these views are kept, and found when they were made before.
    """
    if all(len(seq) == 0 for seq, _ in views):
        return [_no_rows(encoder) for _ in views]
    buckets = cfg.length_buckets
    read_out = encode_packed if cfg.packed_tokens else encode
    dtype = encoder.item_embedding.weight.dtype  # the read-outs leave in the parameters' dtype, whatever autocast did
    with reduced_precision(cfg, encoder.item_embedding.weight.device):
        if not cfg.batch_views or len(views) == 1:
            return [read_out(encoder, seq, lengths, buckets).to(dtype) for seq, lengths in views]
        if cfg.packed_tokens and packed is not None:
            key = tuple(id(t) for view in views for t in view)
            inputs = packed.get(key)
            if inputs is None:
                inputs = packed[key] = packed_inputs(encoder, *_concatenated(views), buckets)
            h = encode_packed_inputs(encoder, inputs).to(dtype)
        else:
            h = read_out(encoder, *_concatenated(views), buckets).to(dtype)
    return list(h.split([len(seq) for seq, _ in views]))


def _concatenated(views: tuple[tuple[Tensor, Tensor], ...]) -> tuple[Tensor, Tensor]:
    """The views' rows as one right-padded batch: (seq, lengths)."""
    width = max(seq.shape[1] for seq, _ in views)
    return (torch.cat([F.pad(seq, (0, width - seq.shape[1])) for seq, _ in views]),
            torch.cat([lengths for _, lengths in views]))


def _no_rows(encoder: SASRecEncoder) -> Tensor:
    """The read-out of no rows, [0, H]; it takes gradients like a read-out, so a gather of it joins the backward."""
    weight = encoder.item_embedding.weight
    return torch.zeros(0, weight.shape[1], dtype=weight.dtype, device=weight.device).requires_grad_(
        torch.is_grad_enabled())


def reduced_precision(cfg: RunConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """`precision: bf16`: autocast the encoder's matrix products to bfloat16 (autocast keeps softmax, LayerNorm and
    the losses computed from the float32 read-out in float32; the packed CPU encoder keeps attention in float32);
    fp32: nothing to enter on the training step."""
    if cfg.precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def encoder_loss(cfg: RunConfig, parts: ModelParts, batch: Batch, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss the encoder minimises (L0 for MCLRec) and its unweighted components (for the log)."""
    return ENCODER_LOSSES[cfg.model](cfg, parts, batch, generator)


def sasrec_loss(cfg: RunConfig, parts: ModelParts, batch: Batch, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
    """SASRec: L = L_rec (Eq. 3), or with loss bce the original objective at every position of the sequence."""
    enc = parts.encoder
    if cfg.loss == "bce":  # batch.targets are the next items [B, L], batch.negatives one sampled item each
        rec = bce_loss(enc.sequence_states(batch.seq), enc.item_weights(), batch.targets, batch.negatives,
                       batch.positions)
        return rec, {"rec": rec}
    (h,) = encode_views(cfg, enc, (batch.seq, batch.lengths))
    rec = _rec_loss(cfg, enc, h, batch.targets, generator, batch.shard)
    return rec, {"rec": rec}


def cl4srec_loss(cfg: RunConfig, parts: ModelParts, batch: Batch, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
    """CL4SRec: L = L_rec + lambda * L_con(h1, h2) (Eq. 3, 8), h1 and h2 the encodings of two stochastic views."""
    if cfg.lambda_cl1 == 0:
        return sasrec_loss(cfg, parts, batch, generator)
    h, h1, h2 = encode_views(cfg, parts.encoder, (batch.seq, batch.lengths), batch.view1, batch.view2)
    rec = _rec_loss(cfg, parts.encoder, h, batch.targets, generator, batch.shard)
    cl1 = _contrast(cfg, h1, h2, batch.shard)
    return rec + cfg.lambda_cl1 * cl1, {"rec": rec, "cl1": cl1}


def duorec_loss(cfg: RunConfig, parts: ModelParts, batch: Batch, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
    """DuoRec (us_x): L = L_rec + lambda_sem * L_con(h', h_s), h' a second (dropout) encoding of the input and h_s
    the encoding of another instance with the same target."""
    if cfg.lambda_sem == 0:
        return sasrec_loss(cfg, parts, batch, generator)
    inputs = (batch.seq, batch.lengths)
    h, h_drop, h_sem = encode_views(cfg, parts.encoder, inputs, inputs, batch.partner)
    rec = _rec_loss(cfg, parts.encoder, h, batch.targets, generator, batch.shard)
    sem = _contrast(cfg, h_drop, h_sem, batch.shard)
    return rec + cfg.lambda_sem * sem, {"rec": rec, "sem": sem}


def mclrec_loss(cfg: RunConfig, parts: ModelParts, batch: Batch, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
    """MCLRec's L0 (Eq. 14): L_rec + lambda * L_cl1 + beta * (L_cl2 + reg_weight * R), the paper's gamma being
    beta * reg_weight (Sec. 4.1.4: gamma = 0.1 beta).

    L_cl1 = L_con(h1, h2) (Eq. 7, 8); L_cl2 (Eq. 9) and R (Eq. 11-13) contrast h1, h2 with z1 = w1(h1), z2 = w2(h2)
    (Eq. 5). Without
    augmenters (cl2: false) there is no L_cl2 and no R, and L0 is CL4SRec's loss.
    On a shard, h1 and h2 are gathered once; the augmenters (row by row) then map the whole batch's views.
    """
    if not uses_augmenters(cfg):
        return cl4srec_loss(cfg, parts, batch, generator)
    h, h1, h2 = encode_views(cfg, parts.encoder, (batch.seq, batch.lengths), batch.view1, batch.view2,
                             packed=batch.packed)
    terms = {"rec": _rec_loss(cfg, parts.encoder, h, batch.targets, generator, batch.shard)}
    total = terms["rec"]
    rows = None
    if batch.shard is not None:
        (h1, h2), rows = gather_rows(batch.shard, h1, h2), batch.shard.rows
    if cfg.lambda_cl1 > 0:
        terms["cl1"] = info_nce(h1, h2, cfg.temperature, rows, fused=cfg.fused_losses)
        total = total + cfg.lambda_cl1 * terms["cl1"]
    aug_total, aug_terms = _augmented_terms(cfg, parts, h1, h2, rows)
    terms.update(aug_terms)
    return total + cfg.beta * aug_total, terms


ENCODER_LOSSES = {"sasrec": sasrec_loss, "cl4srec": cl4srec_loss, "duorec": duorec_loss, "mclrec": mclrec_loss}


def augmenter_loss(cfg: RunConfig, parts: ModelParts, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
    """L1 = L_cl2 + reg_weight * R (Eq. 10, 15; the published code's weight reg_weight = 0.1 where the paper writes
    gamma = 0.1 beta), the augmenters' loss; the encoder re-encodes the views without autograd."""
    with torch.no_grad():
        h1, h2 = encode_views(cfg, parts.encoder, batch.view1, batch.view2)
        if batch.shard is not None:
            h1, h2 = gather_rows(batch.shard, h1, h2)
    return _augmented_terms(cfg, parts, h1, h2, batch.shard.rows if batch.shard is not None else None)


def _augmented_terms(cfg: RunConfig, parts: ModelParts, h1: Tensor, h2: Tensor,
                     rows: Rows | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """L_cl2 (Eq. 9) plus reg_weight * R on z1 = w1(h1), z2 = w2(h2) (Eq. 5). R is Eq. 11-13 on each of L_cl2's
    three pairs, summed, as the published code computes it (the paper's Eq. 11 contrasts z1 with z2 only);
    `rows`: h1, h2 hold the whole batch and these rows' share is computed."""
    z1, z2 = parts.augmenter1(h1), parts.augmenter2(h2)
    cl2, reg = cl2_and_reg(h1, h2, z1, z2, with_reg=cfg.reg, rows=rows, fused=cfg.fused_losses)
    terms = {"cl2": cl2}
    total = cl2
    if reg is not None:
        terms["reg"] = reg
        total = total + cfg.reg_weight * reg
    return total, terms
