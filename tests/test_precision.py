"""`precision: bf16`: the encoder's products under bfloat16 autocast while training; read-outs and losses float32."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from mclrec.checkpoint import load_checkpoint
from mclrec.environment import cpu_flags, slow_bf16_products
from mclrec.training import trainer
from mclrec.training.objectives import build_parts, encode_views
from mclrec.training.trainer import train


def _views(n_items: int):
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 21, (64,), generator=g)
    seq = torch.randint(1, n_items + 1, (64, 20), generator=g)
    seq[torch.arange(20)[None, :] >= lengths[:, None]] = 0
    return seq, lengths


def test_bf16_read_out_is_float32_and_close_to_fp32(tiny, run_cfg):
    cfg = run_cfg("mclrec")
    encoder = build_parts(cfg, tiny.n_items).encoder.eval()
    view = _views(tiny.n_items)
    with torch.no_grad():
        (full,) = encode_views(cfg, encoder, view)
        (half,) = encode_views(cfg.replace(precision="bf16"), encoder, view)
    assert full.dtype == half.dtype == torch.float32
    assert not torch.equal(full, half)  # the products did run in bfloat16
    torch.testing.assert_close(half, full, atol=0.05, rtol=0.05)


def test_bf16_training_runs_and_records_its_precision(tiny, run_cfg, tmp_path):
    summary = train(run_cfg("mclrec", max_epochs=1, precision="bf16"), tiny, tmp_path, progress=False)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert summary["best_epoch"] == 1 and all(torch.isfinite(torch.tensor(v)) for v in log[0]["loss"].values())
    assert load_checkpoint(tmp_path / "best.pt")["config"]["precision"] == "bf16"
    weights = load_checkpoint(tmp_path / "best.pt")["modules"]["encoder"]["item_embedding.weight"]
    assert weights.dtype == torch.float32  # parameters and optimiser state stay float32


def _cpuinfo(tmp_path, flags: str | None):
    path = tmp_path / "cpuinfo"
    flags_line = f"flags\t\t: fpu sse2 {flags}\n" if flags is not None else ""
    path.write_text("processor\t: 0\nmodel name\t: X\n" + flags_line)
    return path


def test_cpu_flags_tell_none_from_cannot_tell(tmp_path):
    assert cpu_flags(("avx2", "amx_bf16"), _cpuinfo(tmp_path, "avx2 avx512f")) == ["avx2"]
    assert cpu_flags(("amx_bf16",), _cpuinfo(tmp_path, "avx2")) == []
    assert cpu_flags(("amx_bf16",), _cpuinfo(tmp_path, None)) is None  # no flags line (e.g. an ARM cpuinfo)
    assert cpu_flags(("amx_bf16",), tmp_path / "missing") is None
    assert slow_bf16_products(_cpuinfo(tmp_path, "avx2 avx512f"))
    assert not slow_bf16_products(_cpuinfo(tmp_path, "avx512f avx512_bf16"))
    assert not slow_bf16_products(_cpuinfo(tmp_path, "amx_tile amx_bf16"))
    assert not slow_bf16_products(tmp_path / "missing")


@pytest.mark.parametrize("slow", [True, False])
def test_bf16_on_a_cpu_without_bf16_products_warns(tiny, run_cfg, tmp_path, monkeypatch, slow):
    monkeypatch.setattr(trainer, "slow_bf16_products", lambda: slow)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(run_cfg("sasrec", max_epochs=1, precision="bf16"), tiny, tmp_path, progress=False)
    bf16 = [w for w in caught if "precision: bf16 on a CPU without AVX512-BF16 or AMX" in str(w.message)]
    assert len(bf16) == (1 if slow else 0)


def _products(fn):
    """Run fn() and return the (op, dtype, shapes) of every matrix product it dispatched, backward included."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []
    products = {"aten.mm.default", "aten.mm.out", "aten.addmm.default", "aten.addmm.out", "aten.bmm.default",
                "aten.bmm.out"}

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if str(func) in products:
                tensors = [a for a in args if isinstance(a, torch.Tensor)]
                seen.append((str(func), tensors[-1].dtype, [tuple(t.shape) for t in tensors]))
            return func(*args, **(kwargs or {}))

    with Record():
        fn()
    return seen


@pytest.mark.parametrize("zero_row", [False, True])
@pytest.mark.parametrize("n", [1, 127, 128, 300])
def test_cpu_bf16_linear_is_autocasts_product_on_padded_rows(n, zero_row):
    from mclrec.models.packed_encoding import CPU_BF16_ROW_MULTIPLE, linear, padded_linear

    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 64, generator=g, requires_grad=True)
    weight = torch.randn(192, 64, generator=g).mul_(0.1).requires_grad_()
    bias = torch.randn(192, generator=g).requires_grad_()
    grad = torch.randn(n + zero_row, 192, generator=g)  # the zero row gets a gradient too, which must be dropped
    grads = {}
    for name in ("autocast", "padded"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if name == "autocast":
                out = torch.nn.functional.linear(x, weight, bias)
                out = torch.nn.functional.pad(out, (0, 0, 0, 1)) if zero_row else out
            else:
                out = (padded_linear if zero_row else linear)(x, weight, bias)
        assert out.dtype == torch.bfloat16 and out.shape == (n + zero_row, 192)
        assert not zero_row or not out[n].any()
        grads[name] = (out.float(), *torch.autograd.grad(out, (x, weight, bias), grad.bfloat16()))
    for ours, reference in zip(grads["padded"], grads["autocast"]):
        assert ours.dtype == reference.dtype
        torch.testing.assert_close(ours, reference, atol=0.02, rtol=0.02)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = (padded_linear if zero_row else linear)(x, weight, bias)
        out.backward(torch.ones_like(out))
    sizes = {size for _, _, shapes in _products(step) for shape in shapes for size in shape}
    # oneDNN sees the weight's sizes, a ones row for the bias gradient, and rows padded to the multiple: never n
    assert sizes - {1, 64, 192} and all(size % CPU_BF16_ROW_MULTIPLE == 0 for size in sizes - {1, 64, 192})


def test_cpu_bf16_encoder_products_see_padded_rows_and_float32_attention(tiny, run_cfg):
    from mclrec.models.packed_encoding import CPU_BF16_ROW_MULTIPLE

    cfg = run_cfg("sasrec", precision="bf16", packed_tokens=True, length_buckets=[8, 16])
    encoder = build_parts(cfg, tiny.n_items).encoder.train()
    seq, lengths = _views(tiny.n_items)
    view = seq[:50], lengths[:50]  # 50 rows: neither a layer's size nor a multiple of the padding
    products = _products(lambda: encode_views(cfg, encoder, view)[0].sum().backward())
    bf16 = [shapes for op, dtype, shapes in products if dtype == torch.bfloat16]
    batched = [(op, dtype) for op, dtype, shapes in products if "bmm" in op]
    assert bf16 and batched
    # every linear layer's product sees padded row counts, never the batch's own: its 50 read-out rows, its tokens
    # (+1: padded_linear's zero row)
    tokens = int(view[1].sum())
    unpadded = {50, tokens, tokens + 1}
    assert not unpadded & {size for shapes in bf16 for shape in shapes for size in shape}
    assert all(n % CPU_BF16_ROW_MULTIPLE for n in unpadded)  # else the test could not tell
    assert all(dtype == torch.float32 for _, dtype in batched)  # attention in float32
