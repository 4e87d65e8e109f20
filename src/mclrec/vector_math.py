"""Resolve MKL's vector-math kernels once per process, before any op runs them on several threads.

PyTorch's x86 wheels send contiguous float32/float64 unary ops (exp, log, sqrt, tanh, erf, ...) to MKL's vector
math library (VML): each intra-op thread calls it on its chunk, asking for the high-accuracy kernel (VML_HA). oneMKL
picks a VML function's kernel on that function's first call, and when the first call runs on two threads at once,
one thread can run the low-accuracy AVX2 kernel (VML_EP, errors up to thousands of ulp) on its whole chunk, for that
one call (pytorch/pytorch#188792: oneMKL 2024.2, the version PyTorch's wheels bundle, including 2.13; not seen from
oneMKL 2025.0 on).

In a training at 2 threads that first call is L_rec's exponentials in the first step (or Adam's square roots):
on the synthetic data the first batch's rows 128-255 of exp(logits - max) matched MKL's AVX2 EP kernel bit for bit,
and 1 process in 8 to 40 started with those numbers, so the same seed gave different runs
(benchmarks/first_step_repeat.py measures it; docs/reliability.md, "Determinism"). One call per function and
precision on a one-element tensor, in the calling thread, settles each kernel before any parallel call; later calls
give the numbers they always gave.
"""

from __future__ import annotations

import functools

import torch

# aten/src/ATen/cpu/vml.h routes these to VML (the list differs between PyTorch versions; calling one that a
# version computes without VML costs a microsecond and changes nothing)
VML_FUNCTIONS = ("abs", "acos", "asin", "atan", "cos", "erf", "erfc", "erfinv", "exp", "expm1", "log", "log10",
                 "log1p", "log2", "sin", "sqrt", "tan", "tanh", "trunc")
PRECISIONS = (torch.float32, torch.float64)


@functools.cache
def resolve_vector_math() -> None:
    """Run each VML-routed function once per precision on one element, here, before threads share its first call."""
    for dtype in PRECISIONS:
        one = torch.full((1,), 0.5, dtype=dtype)  # inside every function's domain (acos, erfinv, log, ...)
        for name in VML_FUNCTIONS:
            getattr(torch, name)(one)
