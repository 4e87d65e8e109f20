"""The packed encoder's groups attended as one autograd node (grouped_attention) against the same attention group
by group through autograd: outputs, gradients and dropout draws bit for bit."""

from __future__ import annotations

import pytest
import torch

import mclrec.models.packed_encoding as packed_encoding
from mclrec.models.dropout import Dropout
from mclrec.models.grouped_attention import can_draw_dropout
from mclrec.models.packed_encoding import encode_packed

from .test_models_encoder import make_encoder, random_batch


def _run(encoder, seq, lengths, buckets, one_node: bool, monkeypatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """encode_packed's read-out and the parameters' gradients of a weighted sum, from the same random state."""
    monkeypatch.setattr(packed_encoding, "_one_node", lambda attn, x: one_node)
    torch.manual_seed(11)
    encoder.zero_grad()
    out = encode_packed(encoder, seq, lengths, buckets)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), {name: param.grad.clone() for name, param in encoder.named_parameters()}


@pytest.mark.parametrize("draws", ["bytes", "uniform"])
@pytest.mark.parametrize("buckets", [(), (3, 6, 9)])
def test_one_node_equals_autograd_group_by_group_bit_for_bit(buckets, draws, monkeypatch):
    encoder = make_encoder(4).train()  # dropout on: the masks must be drawn in the same order
    for module in encoder.modules():
        if isinstance(module, Dropout):
            module.draws = draws
    seq, lengths = random_batch(5, batch=50)
    seq[3, 1] = 0  # a masked item inside a row
    out, grads = _run(encoder, seq, lengths, buckets, True, monkeypatch)
    ref_out, ref_grads = _run(encoder, seq, lengths, buckets, False, monkeypatch)
    assert torch.equal(out, ref_out)
    for name, grad in grads.items():
        assert torch.equal(grad, ref_grads[name]), name
    assert grads["trm_encoder.layer.0.multi_head_attention.key.weight"].abs().sum() > 0


def test_one_node_without_dropout_and_without_gradients(monkeypatch):
    encoder = make_encoder(6).eval()
    seq, lengths = random_batch(8, batch=30)
    with torch.no_grad():
        monkeypatch.setattr(packed_encoding, "_one_node", lambda attn, x: True)
        got = encode_packed(encoder, seq, lengths, (4,))
        monkeypatch.setattr(packed_encoding, "_one_node", lambda attn, x: False)
        assert torch.equal(got, encode_packed(encoder, seq, lengths, (4,)))
        torch.testing.assert_close(got, encoder(seq, lengths), atol=1e-6, rtol=1e-6)


def test_which_dropouts_the_node_can_draw():
    x = torch.zeros(2)
    assert can_draw_dropout(Dropout(0.5), x)
    assert can_draw_dropout(Dropout(0.5).eval(), x) and can_draw_dropout(Dropout(0.0), x)
    assert not can_draw_dropout(Dropout(1.0), x)  # nn.Dropout's zeros, no keep-mask
    assert not can_draw_dropout(torch.nn.Dropout(0.5), x)  # its masks cannot be kept
    assert can_draw_dropout(torch.nn.Dropout(0.5).eval(), x)
