"""The encoder's kernels: `attention: math | sdpa | auto` (scaled_dot_product_attention with RecBole's finite mask
gives the written-out formula's numbers without dropout, the same law with it, and `auto` picks per device) and
`compile` (CUDA only; a CPU run warns and stays eager)."""

from __future__ import annotations

import pytest
import torch

from mclrec import config
from mclrec.models.dropout import Dropout
from mclrec.models.encoder import MASK_VALUE, attend
from mclrec.models.fast_encoding import encode
from mclrec.models.packed_encoding import encode_packed
from mclrec.models.parts import build_parts
from mclrec.run_config import attention_for

from .test_models_encoder import make_encoder, random_batch


def _inputs(seed: int = 0, groups: int = 5, heads: int = 2, width: int = 6, size: int = 8):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(groups, heads, width, size, generator=g) for _ in range(3))
    allowed = torch.ones(width, width, dtype=torch.bool).tril()[None, None] & (torch.rand(groups, 1, 1, width,
                                                                                          generator=g) > 0.3)
    allowed[0, :, :, :] = False  # a row whose every key is masked: a finite mask still gives numbers, not NaN
    return q, k, v, (1.0 - allowed.float()) * MASK_VALUE


def test_sdpa_equals_the_written_out_formula_without_dropout():
    q, k, v, mask = _inputs()
    dropout = Dropout(0.5).eval()
    math_out, sdpa_out = attend(q, k, v, mask, dropout, "math"), attend(q, k, v, mask, dropout, "sdpa")
    assert torch.isfinite(sdpa_out).all()
    torch.testing.assert_close(sdpa_out, math_out, atol=1e-6, rtol=1e-5)
    # auto is math off CUDA: the reference numbers, bit for bit
    assert torch.equal(attend(q, k, v, mask, dropout, "auto"), math_out)


def test_sdpa_dropout_is_seeded_and_unbiased():
    q, k, v, mask = _inputs(1)
    dropout = Dropout(0.5).train()
    torch.manual_seed(3)
    first = attend(q, k, v, mask, dropout, "sdpa")
    torch.manual_seed(3)
    assert torch.equal(attend(q, k, v, mask, dropout, "sdpa"), first)  # the same seed, the same draws
    expected = attend(q, k, v, mask, dropout.eval(), "math")
    assert not torch.allclose(first, expected, atol=1e-3)  # dropout acted
    dropout.train()
    draws = 1000
    error = (sum(attend(q, k, v, mask, dropout, "sdpa") for _ in range(draws)) / draws - expected).abs()
    # inverted dropout keeps the expectation: the mean of the draws converges to the output without dropout (here
    # 0.015 on average over the outputs; dropping without the 1/(1-p) rescale would leave about 0.3)
    assert error.mean() < 0.05 and error.max() < 0.3


@pytest.mark.parametrize("read_out", ["forward", "encode", "encode_packed"])
def test_an_sdpa_encoder_reads_out_the_math_encoders_numbers(read_out):
    seq, lengths = random_batch(5, batch=20)
    seq[2, 0] = 0  # a masked item inside a row is no key
    math_encoder, sdpa_encoder = make_encoder(4), make_encoder(4, attention="sdpa")
    with torch.no_grad():
        if read_out == "forward":
            got, want = sdpa_encoder(seq, lengths), math_encoder(seq, lengths)
        else:
            fn = encode if read_out == "encode" else encode_packed
            got, want = fn(sdpa_encoder, seq, lengths, (4, 8)), fn(math_encoder, seq, lengths, (4, 8))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert sdpa_encoder.state_dict().keys() == math_encoder.state_dict().keys()  # the kernel is no weight


def test_attention_setting_resolves_per_device_and_rejects_unknown_kernels(params):
    assert attention_for("auto", "cuda") == "sdpa" and attention_for("auto", "cpu") == "math"
    assert attention_for("sdpa", "cpu") == "sdpa"
    assert config.settings_defaults()["attention"] == "auto"
    assert config.run_config(params, "synthetic", "sasrec", {"device": "cpu"}).attention == "math"
    with pytest.raises(config.ConfigError, match="attention"):
        config.parse_overrides(["attention=flash"])
    with pytest.raises(ValueError, match="attention must be one of"):
        make_encoder(0, attention="flash")


def test_compile_is_for_cuda_a_cpu_run_warns_and_stays_eager(run_cfg):
    parts = build_parts(run_cfg("sasrec", compile=True), 30)
    with pytest.warns(UserWarning, match="compile: true applies to CUDA runs; this run is on cpu"):
        assert parts.compile(torch.device("cpu")) is False
    assert all(layer._compiled_call_impl is None for layer in parts.encoder.trm_encoder.layer)  # nothing compiled
