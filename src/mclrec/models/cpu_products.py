"""a @ b^T through oneDNN's float32 inner product on x86 CPUs, where it beats MKL's GEMM at L_rec's shapes.

L_rec's logits h W^T ([256, 64] x [64, 12,102] on Beauty) and its input gradient G W ([256, 12,102] x [12,102, 64])
are a long, thin product each. PyTorch's CPU `mm` runs them with MKL's sgemm; oneDNN (which PyTorch's x86 wheels
carry) runs the same products 1.1-1.3x faster on an AVX2 EPYC, the same numbers to float rounding (the logits came
out bit for bit equal at that shape; docs/performance.md). PyTorch reaches oneDNN's float32 inner product only
through `torch.ops.mkldnn._linear_pointwise`, the kernel its compiler emits for linear layers; `times_transposed`
calls it where it exists and falls back to `a @ b.T` everywhere else (other dtypes, other devices, builds without
it, tensors that need autograd). The weight-gradient product G^T h stays on MKL, which is faster there.

Full-ranking evaluation's scores h W^T ([173, 64] x [64, 12,101] blocks on Beauty) take the same route
(SASRecEncoder.full_scores): 1.2x faster, and at hidden sizes up to 128 (K <= 128, more than one row) oneDNN's
scores equalled MKL's bit for bit on the machines measured, so the ranks and metrics did too (the authors' Beauty
checkpoint still gives Table 3 exactly). At larger hidden sizes the two differ by float rounding.
"""

from __future__ import annotations

import functools
import platform

import torch
from torch import Tensor
from torch.utils.flop_counter import flop_registry, register_flop_formula


@functools.cache
def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN's inner product for float32 on an x86 CPU, and it works as used here
    (a private operator: a build whose signature or result differs keeps torch's product)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):  # measured on x86 only
        return False
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    a = torch.arange(12, dtype=torch.float32).view(3, 4)  # small integers: every product is exact
    b = torch.arange(8, dtype=torch.float32).view(2, 4)
    try:
        with torch.no_grad():
            return bool(torch.equal(torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], ""), a @ b.T))
    except (RuntimeError, TypeError):
        return False


def uses_onednn(a: Tensor, b: Tensor) -> bool:
    """Whether times_transposed(a, b) runs on oneDNN: float32 matrices on the CPU, no autograd through them."""
    return (a.dim() == 2 and b.dim() == 2 and a.dtype == torch.float32 and b.dtype == torch.float32
            and a.device.type == "cpu" and b.device.type == "cpu"
            and not (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)) and onednn_available())


def times_transposed(a: Tensor, b: Tensor) -> Tensor:
    """a @ b.T, [m, k] x [n, k] -> [m, n]: oneDNN's inner product where uses_onednn(a, b), else torch's matmul."""
    if uses_onednn(a, b):
        return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    return a @ b.T


def _count_inner_product_flops() -> None:
    """Teach torch's FlopCounterMode oneDNN's inner product (it knows aten's products only), so that FLOP counts,
    and the benchmarks' shares of the matmul rate, include L_rec's products wherever they run."""
    if not onednn_available() or torch.ops.mkldnn._linear_pointwise in flop_registry:
        return

    @register_flop_formula(torch.ops.mkldnn._linear_pointwise)
    def _flops(x_shape, w_shape, *args, **kwargs) -> int:
        rows = 1
        for size in x_shape[:-1]:
            rows *= size
        return 2 * rows * w_shape[0] * w_shape[1]


_count_inner_product_flops()
