"""The training loop: seeded batches, the model's update schedule, validation, early stopping, resume.

A run with nproc > 1 is one training over several processes (training/distributed.py): `train` launches them
(training/launch.py), or runs as one of them under torchrun (`group`). Without a group nothing of that runs: the
one-process path and its numbers are those of earlier versions.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mclrec import __version__
from mclrec.cpu_heap import keep_freed_memory
from mclrec.vector_math import resolve_vector_math
from mclrec.data.processed import ProcessedData
from mclrec.device import enable_determinism, resolve_device  # resolve_device: also the trainer's public name for it
from mclrec.environment import run_environment, slow_bf16_products
from mclrec.run_config import AUTO, AUTO_SETTINGS, RunConfig
from mclrec.paths import RUN_BEST, RUN_CURVES, RUN_LAST, RUN_LOG, RUN_PREV, RUN_SUMMARY
from mclrec.evaluation.ranking import evaluate
from mclrec.io import atomic_open, remove_stale_temps
from mclrec.data.instances import eval_instances
from mclrec.training.early_stopping import judge, stop_reason
from mclrec.checkpoint import (CheckpointError, check_catalogue, load_checkpoint, restore_rng_state, rng_state,
                               save_checkpoint, saved_generator_device)
from mclrec.training.distributed import Group, data_fingerprint, dropout_seed, parameters_fingerprint, reduce_step
from mclrec.training.errors import TrainingError
from mclrec.training.feed import TrainingFeed, sync_free
from mclrec.training.launch import launch
from mclrec.training.objectives import ModelParts, augmenter_loss, build_parts, encoder_loss, uses_augmenters
from mclrec.training.shards import Shard

# PREV: the previous epoch's last.pt, the fallback when last.pt is missing or unreadable
BEST, LAST, PREV, LOG, SUMMARY, CURVES = RUN_BEST, RUN_LAST, RUN_PREV, RUN_LOG, RUN_SUMMARY, RUN_CURVES
# nproc: a resume over another number of processes is refused with its own message (_restore)
RESUME_FREE_KEYS = ("device", "max_epochs", "max_minutes", "num_threads", "eval_batch_size", "nproc", "compile")


@dataclass
class RunState:
    """What the loop needs to continue: counters, best result and the per-epoch log."""

    epoch: int = 0
    best_epoch: int = 0
    best_metric: float = -math.inf
    best_valid: dict[str, float] = field(default_factory=dict)
    bad_epochs: int = 0
    train_seconds: float = 0.0
    stopped: str = ""
    log: list[dict[str, Any]] = field(default_factory=list)


def validation_ks(valid_metric: str) -> tuple[int]:
    """The cut-off validation is scored at during training: the one of `valid_metric` (HR, NDCG and MRR at it).

    Training reads no evaluation setting, so editing `evaluate.ks` re-evaluates runs without retraining them.
    """
    return (int(valid_metric.split("@")[1]),)

def schedule_of(cfg: RunConfig) -> str:
    """The update schedule of a run: MCLRec with augmenters follows `schedule` (meta, paper or joint); every other
    run (the baselines, MCLRec without augmenters) is `single`: one encoder update per batch."""
    return cfg.schedule if uses_augmenters(cfg) else "single"


class Optimisers:
    """Adam for the encoder (theta) and, in the meta and paper schedules, a second Adam for the augmenters (phi1,
    phi2). In the joint schedule (MCLRec-J) one Adam holds theta and phi together.

    The kernel is the run setting `adam`: fused = one fused kernel per update (on the CPU about 6x faster than
    foreach for MCLRec's encoder); foreach = the same numbers as PyTorch's per-parameter loop (its CPU default), which
    keeps the step counters on the host, where a CUDA step would read them as host values. So parameters on CUDA,
    and `fused=True` (the sync-free step), always get fused.
    """

    def __init__(self, cfg: RunConfig | dict, parts: ModelParts, fused: Optional[bool] = None):
        cfg = RunConfig.of(cfg)
        schedule = schedule_of(cfg)
        theta = list(parts.encoder.parameters())
        phi = parts.augmenter_parameters()
        fused = fused or theta[0].is_cuda or cfg.adam == "fused"
        kernel: dict[str, bool] = {"fused": True} if fused else {"foreach": True}
        self.encoder = torch.optim.Adam(theta + phi if schedule == "joint" else theta, lr=cfg.lr,
                                        weight_decay=cfg.weight_decay, **kernel)
        self.augmenter = None
        if schedule in ("meta", "paper"):
            self.augmenter = torch.optim.Adam(phi, lr=cfg.augmenter_lr, **kernel)

    def state_dict(self) -> dict[str, Any]:
        return {"encoder": self.encoder.state_dict(), "augmenter": self.augmenter.state_dict() if self.augmenter else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _load_keeping_kernel(self.encoder, state["encoder"])
        if self.augmenter is not None:
            _load_keeping_kernel(self.augmenter, state["augmenter"])

    def zero_grad(self) -> None:
        self.encoder.zero_grad(set_to_none=True)
        if self.augmenter is not None:
            self.augmenter.zero_grad(set_to_none=True)


def _load_keeping_kernel(optimiser: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load an optimiser state but keep this optimiser's kernel (fused or foreach), which a checkpoint written on the
    other device type names the other way. Loading with it also puts the step counters where that kernel wants
    them (on the parameters' device when fused)."""
    kernel = {key: optimiser.defaults[key] for key in ("foreach", "fused")}
    optimiser.load_state_dict({**state, "param_groups": [{**group, **kernel} for group in state["param_groups"]]})


def _update(loss: torch.Tensor, optimisers: Optimisers, optimiser: torch.optim.Optimizer) -> None:
    """Backpropagate `loss` and step one optimiser; the gradients of the other modules are discarded."""
    optimisers.zero_grad()
    loss.backward()
    optimiser.step()


def _apply(loss: torch.Tensor, terms: dict[str, torch.Tensor], step: str, optimisers: Optimisers,
           optimiser: torch.optim.Optimizer, checks: FiniteChecks, shard: Shard | None) -> dict[str, torch.Tensor]:
    """Check the loss terms and _update; returns the terms.

    On a shard (one process's rows of the batch) the check waits for the whole batch's terms: after the backward,
    the gradients of the optimiser's parameters and the terms are summed over the processes (reduce_step), then
    checked, then the optimiser steps. The returned terms are then the whole batch's.
    """
    if shard is None:
        checks.check(terms, step)
        _update(loss, optimisers, optimiser)
        return terms
    optimisers.zero_grad()
    loss.backward()
    terms = reduce_step([p for group in optimiser.param_groups for p in group["params"]], terms)
    checks.check(terms, step)
    optimiser.step()
    return terms


def _check_finite(terms: dict[str, torch.Tensor], step: str) -> None:
    """Raise naming the loss component that became NaN or infinite."""
    for name, value in terms.items():
        if not torch.isfinite(value):
            raise TrainingError(f"non-finite loss component '{name}' ({float(value)}) in the {step} step")


@dataclass
class _FirstNonFinite:
    """One step's loss terms: for each, the first batch where it was NaN or infinite (-1: none yet) and its value."""

    names: tuple[str, ...]
    batch: torch.Tensor
    value: torch.Tensor


class FiniteChecks:
    """Every update's check that its loss terms are finite, before it is applied.

    eager (the CPU): a check reads the terms and raises at once, before the update, as training always has.
    deferred (a sync-free step, CUDA): a check only records on the device which terms went non-finite first, in
    which batch; `raise_if_any` reads that (one host sync) and raises what the eager check would have raised
    first. The updates in between ran on NaN weights, which is harmless: training stops with the same
    TrainingError before the epoch's checkpoint is written, so the last good one stays.
    """

    def __init__(self, deferred: bool):
        self.deferred = deferred
        self.batch = 0  # the epoch's batch being stepped (deferred reports name it)
        self._steps: dict[str, _FirstNonFinite] = {}  # in the order the steps first ran: a batch's step order

    def check(self, terms: dict[str, torch.Tensor], step: str) -> None:
        """Check the loss terms of `step` (raising at once when eager, recording on the device when deferred)."""
        if not self.deferred:
            _check_finite(terms, step)
            return
        values = torch.stack([v.detach() for v in terms.values()])
        first = self._steps.get(step)
        if first is None:
            first = self._steps[step] = _FirstNonFinite(tuple(terms), torch.full_like(values, -1, dtype=torch.long),
                                                        torch.zeros_like(values))
        new = ~torch.isfinite(values) & (first.batch < 0)
        first.batch = torch.where(new, self.batch, first.batch)
        first.value = torch.where(new, values, first.value)

    def raise_if_any(self) -> None:
        """Raise the TrainingError of the earliest non-finite term recorded (deferred; eager checks raised already)."""
        if not self._steps:
            return
        firsts = list(self._steps.values())
        batches = torch.cat([first.batch for first in firsts]).tolist()  # the one read while all is well
        if max(batches) < 0:
            return
        # the eager check's order: the earliest batch, then the step that ran first, then the term's order
        batch, index = min((batch, index) for index, batch in enumerate(batches) if batch >= 0)
        step, name = [(step, name) for step, first in self._steps.items() for name in first.names][index]
        value = torch.cat([first.value for first in firsts])[index].item()
        raise TrainingError(f"non-finite loss component '{name}' ({value}) in the {step} step (batch {batch} of the "
                            "epoch, found at a deferred check)")


class LossSums:
    """The logged loss terms of an epoch, summed on their device in float64 and read once, by `means`.

    float64 sums make the same additions in the same order as summing the terms' Python floats (what the log always
    held), so the CPU's logged means are unchanged to the last bit, and a CUDA step never reads a loss on the host.
    """

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.batches = 0

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        for key, value in terms.items():
            value = value.detach().to(torch.float64)
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.batches += 1

    def means(self) -> dict[str, float]:
        """The mean of each term over the batches added."""
        if not self.sums:
            return {}
        totals = torch.stack(list(self.sums.values())).tolist()
        return {key: total / self.batches for key, total in zip(self.sums, totals)}


def _detached(terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in terms.items()}


def single_step(cfg: RunConfig, parts: ModelParts, optimisers: Optimisers, batch, generator,
                checks: FiniteChecks) -> dict[str, torch.Tensor]:
    """The baselines (and MCLRec without augmenters): theta <- Adam(theta, grad_theta L)."""
    loss, terms = encoder_loss(cfg, parts, batch, generator)
    return _detached(_apply(loss, terms, "encoder", optimisers, optimisers.encoder, checks, batch.shard))


def joint_step(cfg: RunConfig, parts: ModelParts, optimisers: Optimisers, batch, generator,
               checks: FiniteChecks) -> dict[str, torch.Tensor]:
    """MCLRec-J (Fig. 3): one Adam step on L0 (Eq. 14) for theta, phi1 and phi2 together."""
    loss, terms = encoder_loss(cfg, parts, batch, generator)
    return _detached(_apply(loss, terms, "joint", optimisers, optimisers.encoder, checks, batch.shard))


def mclrec_step(cfg: RunConfig, parts: ModelParts, optimisers: Optimisers, batch, generator,
                checks: FiniteChecks) -> dict[str, torch.Tensor]:
    """MCLRec's meta-optimised updates of one batch (Sec. 3.2, Algorithm 1; R: Sec. 3.3).

    meta (default) runs steps 1-3, as the published code's trainer does; paper runs steps 1-2, as Algorithm 1
    writes it. Each step zeroes every gradient, so a step moves only the parameters its optimiser holds; on a
    shard, each step sums over the processes the gradients of exactly the parameters it moves (_apply).
    """
    # Step 1 (Alg. 1 lines 3-5): L0 = L_rec + lambda L_cl1 + beta (L_cl2 + reg_weight R) (Eq. 14); theta moves,
    # the augmenters phi1, phi2 stay fixed.
    loss, terms = encoder_loss(cfg, parts, batch, generator)
    logged = _detached(_apply(loss, terms, "encoder", optimisers, optimisers.encoder, checks, batch.shard))
    # Step 2 (Alg. 1 lines 8-11): the updated encoder theta' re-encodes the views without gradient;
    # L1 = L_cl2 + reg_weight R (Eq. 9, 11-13, 15); phi1 and phi2 move, theta stays fixed.
    aug_loss, _ = augmenter_loss(cfg, parts, batch)
    aug_terms = _apply(aug_loss, {"augmenter": aug_loss}, "augmenter", optimisers, optimisers.augmenter, checks,
                       batch.shard)
    logged["augmenter"] = aug_terms["augmenter"].detach()
    if cfg.schedule == "meta":
        # Step 3, the published code's addition (not in Algorithm 1): L0 again with the updated augmenters;
        # theta moves. Its loss is not logged (the official trainer logs step 1's).
        loss, terms = encoder_loss(cfg, parts, batch, generator)
        _apply(loss, terms, "encoder (step 3)", optimisers, optimisers.encoder, checks, batch.shard)
    return logged


STEPS = {"single": single_step, "joint": joint_step, "meta": mclrec_step, "paper": mclrec_step}


def train_step(cfg: RunConfig | dict, parts: ModelParts, optimisers: Optimisers, batch, generator,
               checks: Optional[FiniteChecks] = None) -> dict[str, torch.Tensor]:
    """One batch of the run's schedule (schedule_of): single, joint, or MCLRec's meta / paper steps. Returns the
    logged loss terms, detached, on the device (reading them is a host sync on CUDA).

    checks: where each update's loss terms are checked for NaN/inf (default: FiniteChecks for the parameters'
    device: raising at once on the CPU; on CUDA recorded on the device, where a caller that never reads them, such
    as a benchmark, skips the check).
    """
    cfg = RunConfig.of(cfg)
    device = next(parts.encoder.parameters()).device
    if not cfg.resolved:  # callers that pass the settings as written (train resolves them once)
        cfg = cfg.on_device(device.type)
    if checks is None:
        checks = FiniteChecks(deferred=sync_free(device))
    return STEPS[schedule_of(cfg)](cfg, parts, optimisers, batch, generator, checks)


def _module_states(parts: ModelParts) -> dict[str, dict[str, torch.Tensor]]:
    """Detached copies of every module's weights."""
    return {name: {k: v.detach().clone() for k, v in m.state_dict().items()} for name, m in parts.modules().items()}


def _best_payload(cfg: RunConfig, modules: dict, data: ProcessedData, state: RunState,
                  world_size: int = 1) -> dict[str, Any]:
    """best.pt: the weights of the best validation epoch, enough to evaluate or fine-tune."""
    return _payload(cfg, modules, data, replace(state, epoch=state.best_epoch), valid=state.best_valid,
                    world_size=world_size)


def _payload(cfg: RunConfig, modules: dict, data: ProcessedData, state: RunState, **extra: Any) -> dict[str, Any]:
    """Checkpoint contents common to best.pt and last.pt (extra: world_size, the processes the run trained on)."""
    return {
        "config": cfg.to_dict(),
        "modules": modules,
        "n_items": data.n_items,
        "data_stats": data.stats,
        "catalogue_sha256": data.catalogue_sha256,
        "epoch": state.epoch,
        "state": asdict(state),
        "mclrec_version": __version__,
        "torch_version": str(torch.__version__),
        **extra,
    }


def _settings_to_resume(path: Path, cfg: RunConfig, ckpt: dict[str, Any], device: torch.device) -> RunConfig:
    """The settings that continue the checkpoint's run: cfg, or a TrainingError naming the settings that differ.

    The `auto` settings (length_buckets, packed_tokens, attention) are stored resolved for the device type the run
    started on. Resumed on the other type, auto resolves to the other value; the run keeps its own, so it goes on
    encoding as it did. (An explicit setting equal to the other device's auto value is taken for auto too: both
    encode the same function.)
    """
    saved = ckpt["config"]
    trained_on = saved_generator_device(ckpt["rng"]) if "rng" in ckpt else device.type
    if trained_on != device.type:
        for key, resolve in AUTO_SETTINGS.items():
            if getattr(cfg, key) == resolve(AUTO, device.type) and saved.get(key) == resolve(AUTO, trained_on):
                cfg = cfg.replace(**{key: saved[key]})
    settings = cfg.to_dict()
    changed = sorted(k for k, v in settings.items() if k not in RESUME_FREE_KEYS and saved.get(k) != v)
    if changed:
        recorded = " ".join(_resume_option(k, saved) for k in changed if k != "model" or "variant" not in changed)
        raise TrainingError(f"{path}: cannot resume, settings differ from the checkpoint: {', '.join(changed)} "
                            f"(it was trained with {recorded})")
    return cfg


def _resume_option(key: str, saved: dict[str, Any]) -> str:
    """The option that gives `key` its checkpoint value: -m / -d for the run's variant (and so its model) and
    dataset, which are no run settings, else --set key=value."""
    if key in ("variant", "model"):
        return f"-m {saved.get('variant')}"
    if key == "dataset":
        return f"-d {saved.get(key)}"
    return f"--set {key}={json.dumps(saved.get(key), separators=(',', ':'))}"


def _restore(path: Path, cfg: RunConfig, parts: ModelParts, optimisers: Optimisers, generator,
             data: ProcessedData, group: Group | None = None) -> tuple[RunState, dict, RunConfig]:
    """Load last.pt into the live modules, optimisers and RNGs; refuse an incompatible run. Returns the best weights
    and the settings the run continues with (_settings_to_resume) too.

    Over several processes (group), each restores its own random states (rng_ranks[rank]); a run is resumed only
    over as many processes as it trained on, since each process's dropout stream cannot be split or merged.
    """
    ckpt = load_checkpoint(path)
    try:
        check_catalogue(path, ckpt, data)
    except CheckpointError as exc:  # the data changed under the run: incompatible, not a damaged file to fall back from
        raise TrainingError(f"cannot resume: {exc}") from None
    world_size, trained_over = group.world_size if group else 1, ckpt.get("world_size", 1)
    if trained_over != world_size:
        raise TrainingError(f"{path}: cannot resume, the run trained over {trained_over} process(es) and this one "
                            f"runs over {world_size}; resume it with nproc {trained_over} (each process has its own "
                            "random stream, which cannot be split or merged)")
    device = next(parts.encoder.parameters()).device  # the run device
    cfg = _settings_to_resume(path, cfg, ckpt, device)
    for name, module in parts.modules().items():
        module.load_state_dict(ckpt["modules"][name])
    optimisers.load_state_dict(ckpt["optimisers"])
    state = RunState(**ckpt["state"])
    rng = ckpt["rng_ranks"][group.rank] if group else ckpt["rng"]
    reseed = cfg.seed + 1_000_003 * state.epoch
    if not restore_rng_state(rng, generator, device, reseed=reseed):
        if group and device.type == "cuda":
            torch.cuda.manual_seed(dropout_seed(reseed, group.rank))  # dropout streams stay distinct per process
        if group is None or group.is_main:
            print(f"warning: {path} was written on a {saved_generator_device(rng)} run and this one runs on "
                  f"{device}; random streams cannot move between device types, so they were reseeded from the seed "
                  "and the epoch (deterministic, the same law, not the numbers of an uninterrupted run)",
                  file=sys.stderr)
    return state, ckpt["best"], cfg


def _restore_latest(run_dir: Path, cfg: RunConfig, parts: ModelParts, optimisers: Optimisers, generator,
                    data: ProcessedData, group: Group | None = None) -> tuple[RunState, dict, RunConfig, bool]:
    """_restore last.pt or, when it is missing or unreadable, last.prev.pt (warning on stderr); True if it fell back.

    A settings mismatch (TrainingError) is not a reason to fall back; CheckpointError names both files if neither loads.
    """
    last, prev = run_dir / LAST, run_dir / PREV
    try:
        return (*_restore(last, cfg, parts, optimisers, generator, data, group), False)
    except CheckpointError as exc:
        if not prev.exists():
            raise
        problem = exc
    if group is None or group.is_main:
        print(f"warning: {problem}; resuming from the previous epoch's checkpoint {prev} instead", file=sys.stderr)
    try:
        return (*_restore(prev, cfg, parts, optimisers, generator, data, group), True)
    except CheckpointError as exc:
        raise CheckpointError(f"cannot resume: neither {last} nor {prev} is usable ({problem}; {exc})") from None


def _wait_for_device(device: torch.device) -> None:
    """Wait for the device's queued work before a timer is read (CUDA runs asynchronously; the CPU has nothing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _out_of_time(cfg: RunConfig, state: RunState) -> bool:
    """Whether the run has used its max_minutes budget (checked between epochs)."""
    return bool(cfg.max_minutes) and state.train_seconds >= 60 * cfg.max_minutes


def _write_log(run_dir: Path, records: list[dict[str, Any]], valid_metric: str) -> None:
    """Rewrite the JSON-lines log and the flat curves.json (for `dvc plots`) atomically, one entry per epoch."""
    with atomic_open(run_dir / LOG, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, sort_keys=True) + "\n" for r in records)
    curves = [{"epoch": r["epoch"], **{f"loss_{k}": v for k, v in r["loss"].items()},
               valid_metric: r["valid"][valid_metric]} for r in records]
    with atomic_open(run_dir / CURVES, "w", encoding="utf-8") as fh:
        json.dump(curves, fh, indent=1)


READ_EVERY = 100  # batches between the deferred non-finite checks' reads (each drains the GPU's queue once)


def _train_epoch(cfg: RunConfig, parts: ModelParts, optimisers: Optimisers, feed: TrainingFeed, generator: torch.Generator,
                 on_batch: Callable[[], None], deferred: bool = False, group: Group | None = None) -> dict[str, float]:
    """One pass over the shuffled training instances; returns the mean of each loss component.

    deferred (a sync-free step): the non-finite checks are read every READ_EVERY batches and at the end, the loss
    sums at the end; nothing else in the loop reads a device value on the host.
    group: every process builds each whole batch and steps on its own rows of it (Group.local).
    """
    parts.train(True)
    checks, sums = FiniteChecks(deferred), LossSums()
    for number, batch in enumerate(feed.epoch(generator), start=1):
        if group is not None:
            batch = group.local(batch)
        checks.batch = number
        sums.add(train_step(cfg, parts, optimisers, batch, generator, checks))
        if checks.batch % READ_EVERY == 0:
            checks.raise_if_any()
        on_batch()
    checks.raise_if_any()
    return sums.means()


def train(cfg: RunConfig | dict, data: ProcessedData, run_dir: Path, resume: str = "never", progress: bool = True,
          sync_free_step: bool | None = None, group: Group | None = None) -> dict[str, Any]:
    """Train one run into `run_dir` (best.pt, last.pt, log.jsonl, summary.json); return the summary.

    resume: "never" starts afresh; "must" continues from last.pt (error if its settings differ);
    "if-compatible" continues when last.pt matches these settings and starts afresh otherwise.
    A missing or unreadable last.pt falls back to last.prev.pt, the checkpoint of the epoch before it.
    sync_free_step: run the step that never waits for the device (full-width batches, deferred non-finite checks,
    fused Adam); default: on CUDA (feed.sync_free). True on the CPU runs that path there, for tests.
    nproc > 1: without `group`, start nproc processes of this training and return rank 0's summary; each runs
    train with its `group` (this process's place in the run, also under torchrun). Rank 0 writes the files.
    """
    cfg = RunConfig.of(cfg)
    run_dir = Path(run_dir)
    if group is None and cfg.nproc > 1:
        _check_processes(cfg, cfg.nproc, launching=True)
        return launch(cfg.nproc, _process, cfg.to_dict(), data, str(run_dir), resume, progress, sync_free_step,
                      torch.are_deterministic_algorithms_enabled())
    world_size = group.world_size if group else 1
    if world_size != cfg.nproc:
        raise TrainingError(f"nproc is {cfg.nproc} but {world_size} process(es) run this training")
    _check_processes(cfg, world_size)
    main = group is None or group.is_main  # the process that writes checkpoints, logs and the summary
    device = group.device if group else resolve_device(cfg.device)
    cfg = cfg.on_device(device.type)  # the `auto` settings (AUTO_SETTINGS)
    step_sync_free = sync_free(device) if sync_free_step is None else sync_free_step
    if device.type == "cpu":
        keep_freed_memory()
    resolve_vector_math()  # before any op runs MKL's vector math on several threads (same seed, same numbers)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    elif group:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // world_size))  # share the cores, never oversubscribe
    torch.manual_seed(cfg.seed)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    parts = build_parts(cfg, data.n_items).to(device)
    if cfg.compile:
        parts.compile(device)
    if cfg.precision == "bf16" and device.type == "cpu" and slow_bf16_products():
        warnings.warn("precision: bf16 on a CPU without AVX512-BF16 or AMX (/proc/cpuinfo): its bfloat16 products "
                      "take a slow fallback (0.2-0.25x fp32's speed measured on an AVX2-only CPU); fp32 is faster "
                      "here (docs/performance.md, Reduced precision)", stacklevel=2)
    if group:
        _join(group, cfg, data, parts)
    optimisers = Optimisers(cfg, parts, fused=step_sync_free)  # the sync-free step needs fused; else cfg.adam
    feed = TrainingFeed.build(cfg, data, device, sync_free_step=step_sync_free)
    valid_data = eval_instances(data, "valid", device)

    state, best_modules, fell_back = RunState(), None, False
    notice = None  # what a resume found, said on stderr: a mistyped --out must not pass for a resumed run
    if resume != "never" and ((run_dir / LAST).exists() or (run_dir / PREV).exists()):
        try:
            state, best_modules, cfg, fell_back = _restore_latest(run_dir, cfg, parts, optimisers, generator, data,
                                                                  group)
        except TrainingError as exc:
            if resume == "must":
                raise
            notice = f"{run_dir}: not resumed, starting afresh: {exc}"
    elif resume == "must":
        notice = f"{run_dir}: nothing to resume (no {LAST} or {PREV}); starting afresh"
    elif resume == "never" and any((run_dir / name).exists() for name in (LAST, BEST, LOG, SUMMARY)):
        notice = (f"{run_dir}: starting afresh over the run there: its {BEST}, {LAST}, {LOG} and {SUMMARY} are "
                  "replaced (--resume continues it)")
    if state.epoch > 0:
        notice = f"{run_dir}: resuming after epoch {state.epoch}"
    if notice and (group is None or group.is_main):
        print(notice, file=sys.stderr)
    if group:  # every process has read the checkpoint before rank 0 touches the run folder
        group.agree("the checkpoint they continue from", {"epoch": state.epoch, "fell back": fell_back})
    resumed = state.epoch > 0
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(run_dir, (BEST, LAST, LOG, SUMMARY, CURVES))
        if not resumed:
            (run_dir / PREV).unlink(missing_ok=True)  # another run's: never fall back into it
        if best_modules is not None and (fell_back or not (run_dir / BEST).exists()):
            save_checkpoint(run_dir / BEST, _best_payload(cfg, best_modules, data, state, world_size))
        if resumed:
            _write_log(run_dir, state.log, cfg.valid_metric)  # Snakemake deletes it before re-running a killed job
    rotate = resumed and not fell_back  # last.pt is this run's good checkpoint: keep it as last.prev.pt

    started = time.monotonic() - state.train_seconds
    n_batches = feed.batches_per_epoch
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                  disable=not (progress and main), transient=False) as bar:
        while not state.stopped and state.epoch < cfg.max_epochs and not _out_of_time(cfg, state):
            epoch = state.epoch + 1
            task = bar.add_task(f"epoch {epoch}", total=n_batches, info="")
            t0 = time.monotonic()
            try:
                losses = _train_epoch(cfg, parts, optimisers, feed, generator,
                                      lambda: bar.advance(task), deferred=step_sync_free, group=group)
            except TrainingError as exc:
                raise TrainingError(f"epoch {epoch}: {exc}; last good checkpoint kept: {run_dir / LAST}") from None
            _wait_for_device(device)  # the clock reads queued GPU work as done only once it is
            train_time = time.monotonic() - t0
            valid = (group.evaluate if group else evaluate)(parts.encoder, valid_data, cfg.eval_batch_size,
                                                            validation_ks(cfg.valid_metric), cfg.length_buckets)
            metric = valid[cfg.valid_metric]
            state.epoch = epoch
            state.train_seconds = time.monotonic() - started
            rng = {"rng": rng_state(generator, device)}
            if group:
                rng["rng_ranks"] = _synchronise(group, state, rng["rng"], parts)
            record = {"epoch": epoch, "loss": losses, "valid": valid, "epoch_seconds": train_time,
                      "eval_seconds": time.monotonic() - t0 - train_time, "world_size": world_size}
            state.log.append(record)
            decision = judge(metric, state.best_metric, state.bad_epochs, cfg.patience, cfg.early_stopping)
            if main and epoch == 1:  # a fresh run's first checkpoints replace a previous run's: its summary goes too
                (run_dir / SUMMARY).unlink(missing_ok=True)
            if decision.improved:
                state.best_metric, state.best_epoch, state.best_valid, state.bad_epochs = decision.score, epoch, valid, 0
                best_modules = _module_states(parts)
                if main:
                    save_checkpoint(run_dir / BEST, _best_payload(cfg, best_modules, data, state, world_size))
            else:
                state.bad_epochs += 1
            if decision.stop:
                state.stopped = stop_reason(cfg.valid_metric, cfg.patience, cfg.early_stopping)
            if main:
                save_checkpoint(run_dir / LAST, _payload(cfg, _module_states(parts), data, state, best=best_modules,
                                                        optimisers=optimisers.state_dict(), world_size=world_size,
                                                        **rng),
                                keep_previous=run_dir / PREV if rotate else None)
                _write_log(run_dir, state.log, cfg.valid_metric)
            rotate = True
            bar.update(task, info=f"{cfg.valid_metric}={metric:.4f} best={state.best_metric:.4f}@{state.best_epoch}")
    stopped = state.stopped or (f"time budget of {cfg.max_minutes} min reached" if _out_of_time(cfg, state)
                                else f"max_epochs={cfg.max_epochs} reached")
    summary = {"best_epoch": state.best_epoch, "best_valid_metric": state.best_metric, "valid_metric": cfg.valid_metric,
               "epochs_run": state.epoch, "train_seconds": state.train_seconds, "stopped": stopped,
               "device": str(device), "best_checkpoint": str(run_dir / BEST), "world_size": world_size,
               "environment": run_environment(torch.get_num_threads())}
    if main:
        with atomic_open(run_dir / SUMMARY, "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=2, sort_keys=True)
    return summary


def _check_processes(cfg: RunConfig, nproc: int, launching: bool = False) -> None:
    """Refuse more processes than a batch has rows (each must get a share of every full batch); before `launching`
    them on this machine, also more than its GPUs, or one named GPU for all."""
    if nproc > cfg.batch_size:
        raise TrainingError(f"nproc {nproc} exceeds batch_size {cfg.batch_size}: the batch of {cfg.batch_size} rows "
                            "is split over the processes, so each needs at least one row")
    if not launching:
        return
    device = resolve_device(cfg.device)
    if device.type == "cuda" and device.index is not None:
        raise TrainingError(f"device {cfg.device} names one GPU; a training over {nproc} processes puts process r on "
                            "cuda:r: use device cuda or auto")
    if device.type == "cuda" and torch.cuda.device_count() < nproc:
        raise TrainingError(f"nproc {nproc} on CUDA needs {nproc} GPUs (one per process); "
                            f"{torch.cuda.device_count()} visible")


def _process(cfg: dict[str, Any], data: ProcessedData, run_dir: str, resume: str, progress: bool,
             sync_free_step: bool | None, deterministic: bool = False) -> dict[str, Any]:
    """One process of a training over several (started by `launch`): join the process group, train, leave.
    deterministic: the launching process had torch's deterministic algorithms on (mclrec train --deterministic)."""
    if deterministic:
        enable_determinism()
    group = Group.from_env(cfg["device"])
    try:
        return train(cfg, data, Path(run_dir), resume, progress, sync_free_step, group)
    finally:
        group.close()


def _join(group: Group, cfg: RunConfig, data: ProcessedData, parts: ModelParts) -> None:
    """Before training over several processes: give this process its own dropout stream (after the identical
    initialisation) and check that every process has the same settings, data and initial weights."""
    torch.manual_seed(dropout_seed(cfg.seed, group.rank))
    group.agree("the run", {"settings": cfg.to_dict(), "processed data (sha256)": data_fingerprint(data),
                            "initial weights (sha256)": parameters_fingerprint(parts.modules())})


def _synchronise(group: Group, state: RunState, rng: dict[str, Any], parts: ModelParts) -> list[dict[str, Any]]:
    """After an epoch over several processes: every process's random states (rank 0's last.pt holds them all),
    rank 0's clock for all (so max_minutes stops every process after the same epoch), and a check that the
    weights are still the same bits everywhere."""
    every = group.all_objects({"rng": rng, "seconds": state.train_seconds,
                               "weights": parameters_fingerprint(parts.modules())})
    if any(other["weights"] != every[0]["weights"] for other in every):
        raise TrainingError(f"after epoch {state.epoch} the {group.world_size} processes hold different weights "
                            f"(sha256: {', '.join(other['weights'][:12] for other in every)})")
    state.train_seconds = every[0]["seconds"]
    return [other["rng"] for other in every]
