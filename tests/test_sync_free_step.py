"""The CUDA training step without host syncs, exercised on the CPU; `length_buckets: auto`; fused Adam.

A host sync is any read of a device value by Python (t.item(), bool(t), int(t), float(t), t.tolist(), an index
or shape that depends on values). On CUDA each one stalls the host until the GPU has caught up. The CPU runs the
same code with `sync_free_step` on, and every way a tensor reaches the host is counted (CountHostReads).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mclrec import config
from mclrec.checkpoint import load_checkpoint, save_checkpoint
from mclrec.models.parts import build_parts
from mclrec.run_config import AUTO, AUTO_SETTINGS, length_buckets_for, packed_tokens_for
from mclrec.training import objectives, trainer
from mclrec.training.feed import TrainingFeed, sync_free
from mclrec.training.trainer import (FiniteChecks, LossSums, Optimisers, TrainingError, _train_epoch, train,
                                     train_step)

CPU = torch.device("cpu")
# the Python conversions of a tensor to host values (each a sync on CUDA), and a value-dependent shape (nonzero)
CONVERSIONS = ("item", "__bool__", "tolist", "__int__", "__float__", "__index__", "nonzero", "numpy")
# aten ops whose result the host must wait for: a scalar read, value-dependent output shapes
SYNCING_OPS = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten._unique2",
               "aten.unique_consecutive", "aten.repeat_interleave")


def _bool_index(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (indices or ()) if i is not None)


class _SyncingOps(TorchDispatchMode):
    """Counts the aten calls that read device values on the host, including those torch makes internally."""

    def __init__(self, counts: collections.Counter):
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if name in SYNCING_OPS:
            self.counts[name] += 1
        elif name in ("aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl_") and _bool_index(args[1]):
            self.counts[f"{name} (bool mask)"] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def count_host_reads():
    """Count every conversion of a tensor to Python values, every host-to-device torch.tensor(..., device=) copy,
    and every syncing aten op inside the block. Yields the Counter."""
    counts: collections.Counter = collections.Counter()
    originals = {name: getattr(torch.Tensor, name) for name in CONVERSIONS}

    def counted(name, method):
        def wrapper(self, *args, **kwargs):
            counts[f"Tensor.{name}"] += 1
            return method(self, *args, **kwargs)
        return wrapper

    def copy_counted(name, make):
        def wrapper(*args, **kwargs):
            if kwargs.get("device") is not None:  # host data copied to the device: it waits on CUDA
                counts[f"torch.{name}(device=)"] += 1
            return make(*args, **kwargs)
        return wrapper

    makers = {name: getattr(torch, name) for name in ("tensor", "as_tensor")}
    for name, method in originals.items():
        setattr(torch.Tensor, name, counted(name, method))
    for name, make in makers.items():
        setattr(torch, name, copy_counted(name, make))
    try:
        with _SyncingOps(counts):
            yield counts
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)
        for name, make in makers.items():
            setattr(torch, name, make)


VARIANTS = [("mclrec", {}), ("cl4srec", {}), ("duorec", {}), ("sasrec", {}), ("sasrec", {"loss": "bpr"})]
IDS = ["mclrec", "cl4srec", "duorec", "sasrec-ce", "sasrec-bpr"]


def _step_setup(tiny, run_cfg, variant, extra, sync_free_step):
    """A run's modules, optimisers, feed and batches as train() builds them, on the CPU: the CUDA configuration
    (sync_free_step: auto length buckets for CUDA, full-width batches, fused Adam, deferred checks) or the CPU's."""
    cfg = run_cfg(variant, **extra)
    if sync_free_step:  # what `auto` means on CUDA: no length buckets, no packed tokens
        cfg = cfg.replace(**{key: resolve(AUTO, "cuda") for key, resolve in AUTO_SETTINGS.items()})
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    parts = build_parts(cfg, tiny.n_items).to(CPU)
    parts.train(True)
    optimisers = Optimisers(cfg, parts, fused=sync_free_step)
    feed = TrainingFeed.build(cfg, tiny, CPU, sync_free_step=sync_free_step)
    return cfg, parts, optimisers, feed, generator


def _count_steps(tiny, run_cfg, variant, extra, sync_free_step, n_batches=2):
    """Host reads of `n_batches` loop bodies of _train_epoch (batch construction, step, loss sums) from the first."""
    cfg, parts, optimisers, feed, generator = _step_setup(tiny, run_cfg, variant, extra, sync_free_step)
    checks, sums = FiniteChecks(deferred=sync_free_step), LossSums()
    with count_host_reads() as counts:
        batches = feed.epoch(generator)
        for number in range(1, n_batches + 1):
            checks.batch = number
            sums.add(train_step(cfg, parts, optimisers, next(batches), generator, checks))
    checks.raise_if_any()
    assert set(sums.means()) >= {"rec"} and all(math.isfinite(v) for v in sums.means().values())
    return counts


@pytest.mark.parametrize(("variant", "extra"), VARIANTS, ids=IDS)
def test_the_cuda_step_reads_nothing_on_the_host(tiny, run_cfg, variant, extra):
    assert sync_free("cuda") and not sync_free("cpu")
    counts = _count_steps(tiny, run_cfg, variant, extra, sync_free_step=True)
    assert dict(counts) == {}


@pytest.mark.parametrize(("variant", "extra"), [("duorec", {}), ("sasrec", {"loss": "bpr"})], ids=["duorec", "sasrec-bpr"])
def test_the_cuda_step_trains_the_cpu_steps_model(tiny, run_cfg, variant, extra):
    # without dropout and with the same random draws (these models' draws do not depend on the batch width), full-width
    # batches, fused Adam and deferred checks give the CPU path's weights up to float rounding
    extra = {**extra, "hidden_dropout": 0.0, "attn_dropout": 0.0, "length_buckets": []}
    weights = []
    for sync_free_step in (False, True):
        cfg, parts, optimisers, feed, generator = _step_setup(tiny, run_cfg, variant, extra, sync_free_step)
        checks = FiniteChecks(deferred=sync_free_step)
        for batch in itertools.islice(feed.epoch(generator), 3):
            train_step(cfg, parts, optimisers, batch, generator, checks)
        weights.append([p.detach() for p in parts.encoder.parameters()])
    for cpu, cuda_like in zip(*weights):
        torch.testing.assert_close(cuda_like, cpu, rtol=1e-4, atol=1e-5)


def test_the_counter_sees_the_cpu_paths_host_reads(tiny, run_cfg):
    # the CPU keeps its exact path: batch trimming, bucketed encoding and a read of every loss before its update;
    # the groups' sizes are read by two packings (steps 1 and 2: step 3 reuses step 1's)
    counts = _count_steps(tiny, run_cfg, "mclrec", {}, sync_free_step=False, n_batches=1)
    assert counts["Tensor.__int__"] == 1 and counts["Tensor.__bool__"] == 9 and counts["Tensor.tolist"] == 2


def test_an_epoch_reads_the_device_twice(tiny, run_cfg, monkeypatch):
    cfg, parts, optimisers, feed, generator = _step_setup(tiny, run_cfg, "mclrec", {}, True)
    monkeypatch.setattr(feed, "epoch", lambda g: itertools.islice(TrainingFeed.epoch(feed, g), 4))  # a short epoch
    with count_host_reads() as counts:
        losses = _train_epoch(cfg, parts, optimisers, feed, generator, lambda: None, deferred=True)
    # the non-finite checks' flags and the loss sums, once each: not once per batch
    assert dict(counts) == {"Tensor.tolist": 2}
    assert set(losses) == {"rec", "cl1", "cl2", "reg", "augmenter"}


def test_deferred_checks_raise_what_the_eager_check_raises_first():
    checks = FiniteChecks(deferred=True)
    t = torch.tensor
    checks.batch = 1
    checks.check({"rec": t(1.0), "cl1": t(2.0)}, "encoder")
    checks.raise_if_any()  # nothing yet
    checks.check({"augmenter": t(math.inf)}, "augmenter")
    checks.check({"rec": t(math.nan), "cl1": t(1.0)}, "encoder (step 3)")
    checks.batch = 2
    checks.check({"rec": t(math.nan), "cl1": t(math.nan)}, "encoder")
    with pytest.raises(TrainingError, match=r"'augmenter' \(inf\) in the augmenter step \(batch 1 of the epoch"):
        checks.raise_if_any()
    eager = FiniteChecks(deferred=False)
    with pytest.raises(TrainingError, match=r"^non-finite loss component 'cl1' \(nan\) in the encoder step$"):
        eager.check({"rec": t(1.0), "cl1": t(math.nan)}, "encoder")


def test_loss_sums_give_the_python_float_means_to_the_last_bit():
    generator = torch.Generator().manual_seed(5)
    batches = [{"rec": torch.rand((), generator=generator) * 10, "cl1": torch.rand((), generator=generator)}
               for _ in range(257)]
    sums = LossSums()
    for terms in batches:
        sums.add(terms)
    floats: dict[str, float] = {}
    for terms in batches:  # what the trainer summed before: the terms' Python floats
        for key, value in terms.items():
            floats[key] = floats.get(key, 0.0) + float(value)
    assert sums.means() == {key: value / len(batches) for key, value in floats.items()}


@pytest.mark.parametrize("read_every", [100, 4])
def test_a_nan_loss_on_the_sync_free_path_stops_training_at_the_next_read(tiny, run_cfg, tmp_path, monkeypatch,
                                                                          read_every):
    cfg = run_cfg("cl4srec", max_epochs=1, num_threads=1)
    train(cfg, tiny, tmp_path, progress=False, sync_free_step=True)
    before = (tmp_path / "last.pt").read_bytes()
    calls = itertools.count(1)
    info_nce = objectives.info_nce

    def nan_from_batch_3(a, b, temperature=1.0, **kwargs):
        loss = info_nce(a, b, temperature, **kwargs)
        return loss * math.nan if next(calls) >= 3 else loss

    monkeypatch.setattr(objectives, "info_nce", nan_from_batch_3)
    monkeypatch.setattr(trainer, "READ_EVERY", read_every)
    with pytest.raises(TrainingError, match=r"^epoch 2: non-finite loss component 'cl1' \(nan\) in the encoder step "
                                            r"\(batch 3 of the epoch.*; last good checkpoint kept: .*last\.pt$"):
        train(cfg.replace(max_epochs=2), tiny, tmp_path, resume="must", progress=False, sync_free_step=True)
    assert (tmp_path / "last.pt").read_bytes() == before
    batches_run = next(calls) - 1
    assert batches_run == (4 if read_every == 4 else math.ceil(len(TrainingFeed.build(cfg, tiny, CPU)) / cfg.batch_size))


def test_length_buckets_auto_resolves_per_device_type(params):
    assert length_buckets_for("auto", "cpu") == [8, 16, 32] and length_buckets_for("auto", "cuda") == []
    assert length_buckets_for([4, 12], "cuda") == [4, 12]
    assert config.settings_defaults()["length_buckets"] == "auto"
    assert params["train"]["length_buckets"] == "auto"
    assert config.resolve_run(params, "synthetic", "mclrec")["length_buckets"] == "auto"  # Snakemake's params
    cfg = config.run_config(params, "synthetic", "mclrec", {"device": "cpu"})
    assert cfg.length_buckets == [8, 16, 32] and cfg.on_device("cuda").length_buckets == [8, 16, 32]
    assert config.parse_overrides(["length_buckets=auto"]) == {"length_buckets": "auto"}
    with pytest.raises(config.ConfigError, match="length_buckets"):
        config.parse_overrides(["length_buckets=automatic"])


def test_packed_tokens_auto_resolves_per_device_type(params):
    assert packed_tokens_for("auto", "cpu") is True and packed_tokens_for("auto", "cuda") is False
    assert packed_tokens_for(False, "cpu") is False and packed_tokens_for(True, "cuda") is True
    assert config.settings_defaults()["packed_tokens"] == "auto" and params["train"]["packed_tokens"] == "auto"
    cfg = config.run_config(params, "synthetic", "mclrec", {"device": "cpu"})
    assert cfg.packed_tokens is True and cfg.resolved
    assert not cfg.replace(packed_tokens="auto").resolved
    assert config.parse_overrides(["packed_tokens=auto"]) == {"packed_tokens": "auto"}


def test_a_run_resumed_on_the_other_device_type_keeps_its_auto_settings(tiny, params, tmp_path):
    cfg = config.resolve_run(params, "synthetic", "sasrec")  # length_buckets: auto, as written
    cfg.update(device="cpu", batch_size=256, eval_batch_size=256, max_len=20, max_epochs=1, num_threads=1)
    train(cfg, tiny, tmp_path, progress=False)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["config"]["length_buckets"] == [8, 16, 32]  # stored resolved: evaluation encodes as training did
    # the same run as if started on CUDA (auto resolved to []), resumed here on the CPU
    assert ckpt["config"]["packed_tokens"] is True
    ckpt["config"]["length_buckets"], ckpt["config"]["packed_tokens"] = [], False
    ckpt["rng"] = {**ckpt["rng"], "generator": torch.zeros(16, dtype=torch.uint8), "generator_device": "cuda",
                   "cuda": torch.zeros(16, dtype=torch.uint8)}
    save_checkpoint(tmp_path / "last.pt", {k: v for k, v in ckpt.items() if k != "format_version"})
    train({**cfg, "max_epochs": 2}, tiny, tmp_path, resume="must", progress=False)
    resumed = load_checkpoint(tmp_path / "last.pt")["config"]
    assert resumed["length_buckets"] == [] and resumed["packed_tokens"] is False
    # an explicit list that is not the other device's auto is a changed setting
    with pytest.raises(TrainingError, match="settings differ from the checkpoint: length_buckets"):
        train({**cfg, "max_epochs": 3, "length_buckets": [4]}, tiny, tmp_path, resume="must", progress=False)


def test_fused_adam_on_cuda_parameters_and_the_kernel_survives_a_checkpoint(tiny, run_cfg):
    cfg = run_cfg("mclrec")
    parts = build_parts(cfg, tiny.n_items)
    assert Optimisers(cfg, parts).encoder.defaults["fused"] is True  # the CPU's default kernel: adam fused
    cpu = Optimisers(cfg.replace(adam="foreach"), parts)  # the CPU with adam foreach
    assert cpu.encoder.defaults["foreach"] is True and not cpu.encoder.defaults["fused"]
    fused = Optimisers(cfg, parts, fused=True)  # what CUDA parameters get
    assert fused.encoder.defaults["fused"] is True and fused.augmenter.defaults["fused"] is True
    for p in parts.encoder.parameters():
        p.grad = torch.ones_like(p)
    cpu.encoder.step()
    fused.load_state_dict(cpu.state_dict())  # a CPU checkpoint resumed on CUDA stays fused
    assert all(g["fused"] is True and not g["foreach"] for g in fused.encoder.param_groups)
    fused.encoder.step()  # its step counters moved where the fused kernel wants them
    cpu.load_state_dict(fused.state_dict())
    assert all(g["foreach"] is True and not g["fused"] for g in cpu.encoder.param_groups)
    cpu.encoder.step()
