"""The training loop: seeded batches, the model's update schedule, validation, early stopping, resume."""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mclrec import __version__
from mclrec.data.processed import ProcessedData
from mclrec.device import resolve_device  # noqa: F401 (also the trainer's public name for it)
from mclrec.environment import run_environment
from mclrec.run_config import RunConfig
from mclrec.paths import RUN_BEST, RUN_CURVES, RUN_LAST, RUN_LOG, RUN_PREV, RUN_SUMMARY
from mclrec.errors import MclrecError
from mclrec.evaluation.ranking import evaluate
from mclrec.io import atomic_open, remove_stale_temps
from mclrec.data.instances import eval_instances
from mclrec.training.early_stopping import judge, stop_reason
from mclrec.checkpoint import (CheckpointError, load_checkpoint, restore_rng_state, rng_state, save_checkpoint,
                               saved_generator_device)
from mclrec.training.feed import TrainingFeed
from mclrec.training.objectives import ModelParts, augmenter_loss, build_parts, encoder_loss, uses_augmenters

# PREV: the previous epoch's last.pt, the fallback when last.pt is missing or unreadable
BEST, LAST, PREV, LOG, SUMMARY, CURVES = RUN_BEST, RUN_LAST, RUN_PREV, RUN_LOG, RUN_SUMMARY, RUN_CURVES
RESUME_FREE_KEYS = ("device", "max_epochs", "max_minutes", "num_threads", "eval_batch_size")


class TrainingError(MclrecError):
    """Training cannot go on (non-finite loss, incompatible resume)."""


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
    phi2). In the joint schedule (MCLRec-J) one Adam holds theta and phi together."""

    def __init__(self, cfg: RunConfig | dict, parts: ModelParts):
        cfg = RunConfig.of(cfg)
        schedule = schedule_of(cfg)
        theta = list(parts.encoder.parameters())
        phi = parts.augmenter_parameters()
        # foreach: the same numbers as PyTorch's per-parameter loop (its CPU default), about 2x faster there
        self.encoder = torch.optim.Adam(theta + phi if schedule == "joint" else theta, lr=cfg.lr,
                                        weight_decay=cfg.weight_decay, foreach=True)
        self.augmenter = None
        if schedule in ("meta", "paper"):
            self.augmenter = torch.optim.Adam(phi, lr=cfg.augmenter_lr, foreach=True)

    def state_dict(self) -> dict[str, Any]:
        return {"encoder": self.encoder.state_dict(), "augmenter": self.augmenter.state_dict() if self.augmenter else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.encoder.load_state_dict(state["encoder"])
        if self.augmenter is not None:
            self.augmenter.load_state_dict(state["augmenter"])

    def zero_grad(self) -> None:
        self.encoder.zero_grad(set_to_none=True)
        if self.augmenter is not None:
            self.augmenter.zero_grad(set_to_none=True)


def _update(loss: torch.Tensor, optimisers: Optimisers, optimiser: torch.optim.Optimizer) -> None:
    """Backpropagate `loss` and step one optimiser; the gradients of the other modules are discarded."""
    optimisers.zero_grad()
    loss.backward()
    optimiser.step()


def single_step(cfg: RunConfig, parts: ModelParts, optimisers: Optimisers, batch, generator) -> dict[str, float]:
    """The baselines (and MCLRec without augmenters): theta <- Adam(theta, grad_theta L)."""
    loss, terms = encoder_loss(cfg, parts, batch, generator)
    _check_finite(terms, "encoder")
    _update(loss, optimisers, optimisers.encoder)
    return {k: float(v.detach()) for k, v in terms.items()}


def joint_step(cfg: RunConfig, parts: ModelParts, optimisers: Optimisers, batch, generator) -> dict[str, float]:
    """MCLRec-J (Fig. 3): one Adam step on L0 (Eq. 14) for theta, phi1 and phi2 together."""
    loss, terms = encoder_loss(cfg, parts, batch, generator)
    _check_finite(terms, "joint")
    _update(loss, optimisers, optimisers.encoder)
    return {k: float(v.detach()) for k, v in terms.items()}


def mclrec_step(cfg: RunConfig, parts: ModelParts, optimisers: Optimisers, batch, generator) -> dict[str, float]:
    """MCLRec's meta-optimised updates of one batch (Sec. 3.3, Algorithm 1).

    meta (default) runs steps 1-3, as the published code's trainer does; paper runs steps 1-2, as Algorithm 1
    writes it. Each step zeroes every gradient, so a step moves only the parameters its optimiser holds.
    """
    # Step 1 (Alg. 1 lines 3-4): L0 = L_rec + lambda L_cl1 + beta (L_cl2 + gamma R) (Eq. 14); theta moves,
    # the augmenters phi1, phi2 stay fixed.
    loss, terms = encoder_loss(cfg, parts, batch, generator)
    _check_finite(terms, "encoder")
    _update(loss, optimisers, optimisers.encoder)
    logged = {k: float(v.detach()) for k, v in terms.items()}
    # Step 2 (Alg. 1 lines 6-9): the updated encoder theta' re-encodes the views without gradient;
    # L1 = L_cl2 + gamma R (Eq. 9-13, 15); phi1 and phi2 move, theta stays fixed.
    aug_loss, _ = augmenter_loss(cfg, parts, batch)
    _check_finite({"augmenter": aug_loss}, "augmenter")
    _update(aug_loss, optimisers, optimisers.augmenter)
    logged["augmenter"] = float(aug_loss.detach())
    if cfg.schedule == "meta":
        # Step 3, the published code's addition (not in Algorithm 1): L0 again with the updated augmenters;
        # theta moves. Its loss is not logged (the official trainer logs step 1's).
        loss, terms = encoder_loss(cfg, parts, batch, generator)
        _check_finite(terms, "encoder (step 3)")
        _update(loss, optimisers, optimisers.encoder)
    return logged


STEPS = {"single": single_step, "joint": joint_step, "meta": mclrec_step, "paper": mclrec_step}


def train_step(cfg: RunConfig | dict, parts: ModelParts, optimisers: Optimisers, batch, generator) -> dict[str, float]:
    """One batch of the run's schedule (schedule_of): single, joint, or MCLRec's meta / paper steps."""
    cfg = RunConfig.of(cfg)
    return STEPS[schedule_of(cfg)](cfg, parts, optimisers, batch, generator)


def _check_finite(terms: dict[str, torch.Tensor], step: str) -> None:
    """Raise naming the loss component that became NaN or infinite."""
    for name, value in terms.items():
        if not torch.isfinite(value):
            raise TrainingError(f"non-finite loss component '{name}' ({float(value)}) in the {step} step")


def _module_states(parts: ModelParts) -> dict[str, dict[str, torch.Tensor]]:
    """Detached copies of every module's weights."""
    return {name: {k: v.detach().clone() for k, v in m.state_dict().items()} for name, m in parts.modules().items()}


def _best_payload(cfg: RunConfig, modules: dict, data: ProcessedData, state: RunState) -> dict[str, Any]:
    """best.pt: the weights of the best validation epoch, enough to evaluate or fine-tune."""
    return _payload(cfg, modules, data, replace(state, epoch=state.best_epoch), valid=state.best_valid)


def _payload(cfg: RunConfig, modules: dict, data: ProcessedData, state: RunState, **extra: Any) -> dict[str, Any]:
    """Checkpoint contents common to best.pt and last.pt."""
    return {
        "config": cfg.to_dict(),
        "modules": modules,
        "n_items": data.n_items,
        "data_stats": data.stats,
        "epoch": state.epoch,
        "state": asdict(state),
        "mclrec_version": __version__,
        "torch_version": str(torch.__version__),
        **extra,
    }


def _restore(path: Path, cfg: RunConfig, parts: ModelParts, optimisers: Optimisers, generator,
             data: ProcessedData) -> tuple[RunState, dict]:
    """Load last.pt into the live modules, optimisers and RNGs; refuse an incompatible run. Returns the best weights too."""
    ckpt = load_checkpoint(path)
    if ckpt["n_items"] != data.n_items:
        raise TrainingError(f"{path}: checkpoint has {ckpt['n_items']} items, the data has {data.n_items}")
    settings = cfg.to_dict()
    changed = sorted(k for k, v in settings.items() if k not in RESUME_FREE_KEYS and ckpt["config"].get(k) != v)
    if changed:
        raise TrainingError(f"{path}: cannot resume, settings differ from the checkpoint: {', '.join(changed)}")
    for name, module in parts.modules().items():
        module.load_state_dict(ckpt["modules"][name])
    optimisers.load_state_dict(ckpt["optimisers"])
    state = RunState(**ckpt["state"])
    device = next(parts.encoder.parameters()).device  # the run device
    if not restore_rng_state(ckpt["rng"], generator, device, reseed=cfg.seed + 1_000_003 * state.epoch):
        print(f"warning: {path} was written on a {saved_generator_device(ckpt['rng'])} run and this one runs on "
              f"{device}; random streams cannot move between device types, so they were reseeded from the seed and "
              "the epoch (deterministic, the same law, not the numbers of an uninterrupted run)", file=sys.stderr)
    return state, ckpt["best"]


def _restore_latest(run_dir: Path, cfg: RunConfig, parts: ModelParts, optimisers: Optimisers, generator,
                    data: ProcessedData) -> tuple[RunState, dict, bool]:
    """_restore last.pt or, when it is missing or unreadable, last.prev.pt (warning on stderr); True if it fell back.

    A settings mismatch (TrainingError) is not a reason to fall back; CheckpointError names both files if neither loads.
    """
    last, prev = run_dir / LAST, run_dir / PREV
    try:
        return (*_restore(last, cfg, parts, optimisers, generator, data), False)
    except CheckpointError as exc:
        if not prev.exists():
            raise
        problem = exc
    print(f"warning: {problem}; resuming from the previous epoch's checkpoint {prev} instead", file=sys.stderr)
    try:
        return (*_restore(prev, cfg, parts, optimisers, generator, data), True)
    except CheckpointError as exc:
        raise CheckpointError(f"cannot resume: neither {last} nor {prev} is usable ({problem}; {exc})") from None


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


def _train_epoch(cfg: RunConfig, parts: ModelParts, optimisers: Optimisers, feed: TrainingFeed, generator: torch.Generator,
                 on_batch: Callable[[], None]) -> dict[str, float]:
    """One pass over the shuffled training instances; returns the mean of each loss component."""
    parts.train(True)
    sums: dict[str, float] = {}
    n_batches = 0
    for batch in feed.epoch(generator):
        terms = train_step(cfg, parts, optimisers, batch, generator)
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + value
        n_batches += 1
        on_batch()
    return {key: value / n_batches for key, value in sums.items()}


def train(cfg: RunConfig | dict, data: ProcessedData, run_dir: Path, resume: str = "never", progress: bool = True) -> dict[str, Any]:
    """Train one run into `run_dir` (best.pt, last.pt, log.jsonl, summary.json); return the summary.

    resume: "never" starts afresh; "must" continues from last.pt (error if its settings differ);
    "if-compatible" continues when last.pt matches these settings and starts afresh otherwise.
    A missing or unreadable last.pt falls back to last.prev.pt, the checkpoint of the epoch before it.
    """
    cfg = RunConfig.of(cfg)
    run_dir = Path(run_dir)
    device = resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    parts = build_parts(cfg, data.n_items).to(device)
    optimisers = Optimisers(cfg, parts)
    feed = TrainingFeed.build(cfg, data, device)
    valid_data = eval_instances(data, "valid", device)

    state, best_modules, fell_back = RunState(), None, False
    if resume != "never" and ((run_dir / LAST).exists() or (run_dir / PREV).exists()):
        try:
            state, best_modules, fell_back = _restore_latest(run_dir, cfg, parts, optimisers, generator, data)
        except TrainingError:
            if resume == "must":
                raise
    resumed = state.epoch > 0
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(run_dir, (BEST, LAST, LOG, SUMMARY, CURVES))
    if not resumed:
        (run_dir / PREV).unlink(missing_ok=True)  # another run's: never fall back into it
    if best_modules is not None and (fell_back or not (run_dir / BEST).exists()):
        save_checkpoint(run_dir / BEST, _best_payload(cfg, best_modules, data, state))
    if resumed:
        _write_log(run_dir, state.log, cfg.valid_metric)  # Snakemake deletes it before re-running a killed job
    rotate = resumed and not fell_back  # last.pt is this run's good checkpoint: keep it as last.prev.pt

    started = time.monotonic() - state.train_seconds
    n_batches = feed.batches_per_epoch
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                  disable=not progress, transient=False) as bar:
        while not state.stopped and state.epoch < cfg.max_epochs and not _out_of_time(cfg, state):
            epoch = state.epoch + 1
            task = bar.add_task(f"epoch {epoch}", total=n_batches, info="")
            t0 = time.monotonic()
            try:
                losses = _train_epoch(cfg, parts, optimisers, feed, generator,
                                      lambda: bar.advance(task))
            except TrainingError as exc:
                raise TrainingError(f"epoch {epoch}: {exc}; last good checkpoint kept: {run_dir / LAST}") from None
            train_time = time.monotonic() - t0
            valid = evaluate(parts.encoder, valid_data, cfg.eval_batch_size, validation_ks(cfg.valid_metric),
                             cfg.length_buckets)
            metric = valid[cfg.valid_metric]
            state.epoch = epoch
            state.train_seconds = time.monotonic() - started
            record = {"epoch": epoch, "loss": losses,
                      "valid": valid, "epoch_seconds": train_time, "eval_seconds": time.monotonic() - t0 - train_time}
            state.log.append(record)
            decision = judge(metric, state.best_metric, state.bad_epochs, cfg.patience, cfg.early_stopping)
            if decision.improved:
                state.best_metric, state.best_epoch, state.best_valid, state.bad_epochs = decision.score, epoch, valid, 0
                best_modules = _module_states(parts)
                save_checkpoint(run_dir / BEST, _best_payload(cfg, best_modules, data, state))
            else:
                state.bad_epochs += 1
            if decision.stop:
                state.stopped = stop_reason(cfg.valid_metric, cfg.patience, cfg.early_stopping)
            save_checkpoint(run_dir / LAST, _payload(cfg, _module_states(parts), data, state, best=best_modules,
                                                    optimisers=optimisers.state_dict(), rng=rng_state(generator, device)),
                            keep_previous=run_dir / PREV if rotate else None)
            rotate = True
            _write_log(run_dir, state.log, cfg.valid_metric)
            bar.update(task, info=f"{cfg.valid_metric}={metric:.4f} best={state.best_metric:.4f}@{state.best_epoch}")
    stopped = state.stopped or (f"time budget of {cfg.max_minutes} min reached" if _out_of_time(cfg, state)
                                else f"max_epochs={cfg.max_epochs} reached")
    summary = {"best_epoch": state.best_epoch, "best_valid_metric": state.best_metric, "valid_metric": cfg.valid_metric,
               "epochs_run": state.epoch, "train_seconds": state.train_seconds, "stopped": stopped,
               "device": str(device), "best_checkpoint": str(run_dir / BEST),
               "environment": run_environment(torch.get_num_threads())}
    with atomic_open(run_dir / SUMMARY, "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2, sort_keys=True)
    return summary
