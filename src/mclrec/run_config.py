"""The settings of one run as a typed, frozen object: code reads `cfg.lambda_cl1`, a mistyped name fails at once.

`config.resolve_run` builds the resolved settings from params.yaml (validated against the schema, with its
file/line/key errors); `RunConfig.of` turns that document, or a checkpoint's stored copy of it, into this object.
Checkpoints and results store `to_dict()`, so they stay plain data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from mclrec.errors import ConfigError

IDENTITY = ("dataset", "variant", "model", "max_len")  # set by resolve_run, not by the settings schema
FROM_EVALUATE = ("eval_batch_size",)  # params.yaml evaluate.batch_size: validation during training chunks by it
AUTO = "auto"
# What `length_buckets: auto` means off CUDA. Grouping rows by length saves the CPU most of the padded work; on CUDA
# each group costs a host sync (its size must reach the host to slice it) and small kernels, so auto is [] there.
CPU_LENGTH_BUCKETS = (8, 16, 32)


def length_buckets_for(setting: list[int] | str, device_type: str) -> list[int]:
    """The length buckets a run on `device_type` ('cpu', 'cuda') encodes with: the setting, or what `auto` means there."""
    if setting != AUTO:
        return list(setting)
    return [] if device_type == "cuda" else list(CPU_LENGTH_BUCKETS)


def packed_tokens_for(setting: bool | str, device_type: str) -> bool:
    """Whether a run on `device_type` encodes packed tokens: the setting, or what `auto` means there (on off CUDA,
    where it does the least work; off on CUDA, where packing reads the groups' sizes on the host, a sync)."""
    if setting != AUTO:
        return bool(setting)
    return device_type != "cuda"


def attention_for(setting: str, device_type: str) -> str:
    """The attention kernel of a run on `device_type`: the setting, or what `auto` means there (sdpa on CUDA, where
    its fused kernels pay; math elsewhere: on the CPU sdpa is slower with attention dropout, measured)."""
    if setting != AUTO:
        return setting
    return "sdpa" if device_type == "cuda" else "math"


# The settings `auto` stands for until a run's device is known, and what they resolve to there.
AUTO_SETTINGS = {"length_buckets": length_buckets_for, "packed_tokens": packed_tokens_for,
                 "attention": attention_for}


@dataclass(frozen=True)
class RunConfig:
    """Every setting of one run (params.schema.yaml, $defs.settings) plus what identifies it."""

    # identity
    dataset: str
    variant: str
    model: str
    max_len: int
    # run
    seed: int
    device: str
    num_threads: Optional[int]
    nproc: int  # processes of one training (training/distributed.py); 1 = one process, no process group
    max_epochs: int
    max_minutes: Optional[float]
    patience: int
    early_stopping: str
    valid_metric: str
    batch_size: int
    eval_batch_size: int
    lr: float
    weight_decay: float
    # encoder
    hidden_size: int
    n_layers: int
    n_heads: int
    inner_size: int
    hidden_dropout: float
    attn_dropout: float
    layer_norm_eps: float
    initializer_range: float
    length_buckets: list[int] | str  # a list, or `auto` until on_device resolves it
    batch_views: bool
    packed_tokens: bool | str  # or `auto` until on_device resolves it
    attention: str  # math, sdpa, or `auto` until on_device resolves it
    compile: bool  # torch.compile the encoder's blocks (CUDA; ModelParts.compile)
    precision: str
    dropout_draws: str  # bytes or uniform: how the CPU draws dropout keep-masks (models/dropout.py)
    fused_losses: bool  # the losses as single autograd nodes with closed-form gradients (models/fused_losses.py)
    adam: str  # fused or foreach: Adam's kernel (training/trainer.Optimisers; CUDA always fused)
    # losses and augmentation
    loss: str
    lambda_cl1: float
    temperature: float
    crop_ratio: float
    mask_ratio: float
    reorder_ratio: float
    mask_item: str
    lambda_sem: float
    beta: float
    cl2: bool
    reg: bool
    reg_weight: float
    share_augmenter: bool
    augmenter: str
    augmenter_lr: float
    schedule: str

    @classmethod
    def of(cls, settings: "RunConfig | Mapping[str, Any]") -> "RunConfig":
        """A RunConfig as it is, or one built from a resolved-settings mapping (every field, nothing else)."""
        if isinstance(settings, RunConfig):
            return settings
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(names - set(settings))
        unknown = sorted(set(settings) - names)
        if missing or unknown:
            raise ConfigError(f"run settings: missing {missing or 'nothing'}, unknown {unknown or 'nothing'}")
        return cls(**{name: settings[name] for name in names})

    def to_dict(self) -> dict[str, Any]:
        """The plain settings document (what show-config prints and checkpoints store)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "RunConfig":
        """A copy with some settings changed."""
        return dataclasses.replace(self, **changes)

    def on_device(self, device_type: str) -> "RunConfig":
        """These settings for a run on `device_type`: each `auto` (AUTO_SETTINGS) becomes what is used there (what a
        run's checkpoints store, so evaluating or resuming it encodes as it was trained)."""
        return self.replace(**{key: resolve(getattr(self, key), device_type) for key, resolve in AUTO_SETTINGS.items()})

    @property
    def resolved(self) -> bool:
        """Whether no setting is `auto` any more (on_device has run)."""
        return all(getattr(self, key) != AUTO for key in AUTO_SETTINGS)
