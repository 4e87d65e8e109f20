"""The trainable modules of a run, built from its settings: the encoder and, for MCLRec, the augmenters."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from mclrec.models.augmenters import build_augmenter
from mclrec.models.dropout import set_dropout_draws
from mclrec.models.encoder import SASRecEncoder
from mclrec.run_config import RunConfig


@dataclass
class ModelParts:
    """The trainable modules of one run: the encoder, and MCLRec's augmenters when in use."""

    encoder: SASRecEncoder
    augmenter1: Optional[nn.Module] = None
    augmenter2: Optional[nn.Module] = None

    def augmenter_parameters(self) -> list[nn.Parameter]:
        """Parameters of the distinct augmenter modules (one set when shared)."""
        mods = {id(m): m for m in (self.augmenter1, self.augmenter2) if m is not None}
        return [p for m in mods.values() for p in m.parameters()]

    def modules(self) -> dict[str, nn.Module]:
        """Named modules, for checkpoints and train/eval mode switches."""
        mods: dict[str, nn.Module] = {"encoder": self.encoder}
        if self.augmenter1 is not None:
            mods["augmenter1"] = self.augmenter1
        if self.augmenter2 is not None and self.augmenter2 is not self.augmenter1:
            mods["augmenter2"] = self.augmenter2
        return mods

    def train(self, mode: bool = True) -> None:
        """Set train/eval mode on every module."""
        for module in self.modules().values():
            module.train(mode)

    def to(self, device: torch.device) -> "ModelParts":
        """Move every module to `device`."""
        for module in self.modules().values():
            module.to(device)
        return self

    def compile(self, device: torch.device) -> bool:
        """`compile: true`: torch.compile every transformer block of the encoder in place (its state-dict keys stay
        RecBole's); True when it did. On CUDA only: the batches there keep one width (sync-free feed), so each
        block compiles once per shape (a full batch, the epoch's last one, the read-out-only final block).
        Elsewhere it warns and stays eager: on the CPU it was measured slower (docs/performance.md)."""
        if device.type != "cuda":
            warnings.warn(f"compile: true applies to CUDA runs; this run is on {device}, so it runs eagerly",
                          stacklevel=2)
            return False
        for layer in self.encoder.trm_encoder.layer:
            layer.compile(dynamic=False)
        return True


def uses_augmenters(cfg: RunConfig | dict) -> bool:
    """MCLRec with L_cl2 on has learnable augmenters (w/o L_cl2 it is CL4SRec with MCLRec's weights)."""
    cfg = RunConfig.of(cfg)
    return cfg.model == "mclrec" and bool(cfg.cl2)


def build_parts(cfg: RunConfig | dict, n_items: int) -> ModelParts:
    """Create freshly initialised modules for a run (a RunConfig, or a checkpoint's stored settings)."""
    cfg = RunConfig.of(cfg)
    encoder = SASRecEncoder(
        n_items=n_items,
        max_len=cfg.max_len,
        hidden_size=cfg.hidden_size,
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        inner_size=cfg.inner_size,
        hidden_dropout=cfg.hidden_dropout,
        attn_dropout=cfg.attn_dropout,
        layer_norm_eps=cfg.layer_norm_eps,
        initializer_range=cfg.initializer_range,
        attention=cfg.attention,
    )
    set_dropout_draws(encoder, cfg.dropout_draws)
    if not uses_augmenters(cfg):
        return ModelParts(encoder)
    aug1 = build_augmenter(cfg.augmenter, cfg.hidden_size)
    aug2 = aug1 if cfg.share_augmenter else build_augmenter(cfg.augmenter, cfg.hidden_size)
    return ModelParts(encoder, aug1, aug2)
