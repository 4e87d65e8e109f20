"""SASRecEncoder against a naive re-implementation of REFERENCE.md, plus RecBole checkpoint interop."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mclrec.errors import MclrecError
from mclrec.models.dropout import Dropout, cpu_keep_mask
from mclrec.models.encoder import SASRecEncoder
from mclrec.models.fast_encoding import encode, encode_last
from mclrec.models.packed_encoding import encode_packed
from mclrec.models.recbole import encoder_from_recbole, load_recbole_checkpoint, to_recbole_state_dict

N_ITEMS, MAX_LEN, HIDDEN, N_LAYERS, N_HEADS, INNER = 30, 12, 16, 2, 2, 24

RECBOLE_KEYS = {"item_embedding.weight", "position_embedding.weight", "LayerNorm.weight", "LayerNorm.bias"} | {
    f"trm_encoder.layer.{i}.{part}.{name}.{p}"
    for i in range(2)
    for part, names in (("multi_head_attention", ("query", "key", "value", "dense", "LayerNorm")),
                        ("feed_forward", ("dense_1", "dense_2", "LayerNorm")))
    for name in names
    for p in ("weight", "bias")
}


def make_encoder(seed: int = 0, **kwargs) -> SASRecEncoder:
    torch.manual_seed(seed)
    params = dict(n_items=N_ITEMS, max_len=MAX_LEN, hidden_size=HIDDEN, n_layers=N_LAYERS, n_heads=N_HEADS,
                  inner_size=INNER) | kwargs
    encoder = SASRecEncoder(**params)
    with torch.no_grad():  # perturb all weights so biases / LayerNorm parameters are not trivially 0 / 1
        for p in encoder.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return encoder.eval()


def random_batch(seed: int, batch: int = 7, length: int = MAX_LEN) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    lengths[0] = length
    seq = torch.randint(1, N_ITEMS + 1, (batch, length), generator=g)
    seq[torch.arange(length)[None, :] >= lengths[:, None]] = 0
    return seq, lengths


def naive_layer_norm(x, w, b, eps=1e-12):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def naive_gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def naive_forward(sd: dict[str, torch.Tensor], seq: torch.Tensor, lengths: torch.Tensor, n_heads: int) -> torch.Tensor:
    """REFERENCE.md's encoder written out one sequence and one head at a time (eval mode, no dropout)."""
    outputs = []
    for b in range(seq.shape[0]):
        items = seq[b]
        L = len(items)
        x = sd["item_embedding.weight"][items] + sd["position_embedding.weight"][:L]
        x = naive_layer_norm(x, sd["LayerNorm.weight"], sd["LayerNorm.bias"])
        mask = torch.full((L, L), -10000.0)
        for i in range(L):
            for j in range(L):
                if j <= i and items[j] != 0:
                    mask[i, j] = 0.0
        for layer in range(N_LAYERS):
            p = f"trm_encoder.layer.{layer}."
            a = p + "multi_head_attention."
            q = x @ sd[a + "query.weight"].T + sd[a + "query.bias"]
            k = x @ sd[a + "key.weight"].T + sd[a + "key.bias"]
            v = x @ sd[a + "value.weight"].T + sd[a + "value.bias"]
            d = x.shape[1] // n_heads
            heads = []
            for h in range(n_heads):
                cols = slice(h * d, (h + 1) * d)
                scores = q[:, cols] @ k[:, cols].T / math.sqrt(d) + mask
                heads.append(torch.softmax(scores, dim=-1) @ v[:, cols])
            context = torch.cat(heads, dim=1)
            out = context @ sd[a + "dense.weight"].T + sd[a + "dense.bias"]
            x = naive_layer_norm(out + x, sd[a + "LayerNorm.weight"], sd[a + "LayerNorm.bias"])
            f = p + "feed_forward."
            inner = naive_gelu(x @ sd[f + "dense_1.weight"].T + sd[f + "dense_1.bias"])
            out = inner @ sd[f + "dense_2.weight"].T + sd[f + "dense_2.bias"]
            x = naive_layer_norm(out + x, sd[f + "LayerNorm.weight"], sd[f + "LayerNorm.bias"])
        outputs.append(x[lengths[b] - 1])
    return torch.stack(outputs)


def test_state_dict_keys_are_exactly_recboles():
    encoder = SASRecEncoder(n_items=N_ITEMS)
    sd = encoder.state_dict()
    assert set(sd) == RECBOLE_KEYS
    assert sd["item_embedding.weight"].shape == (N_ITEMS + 2, 64)
    assert sd["position_embedding.weight"].shape == (50, 64)
    assert sd["trm_encoder.layer.0.feed_forward.dense_1.weight"].shape == (256, 64)
    assert len(list(encoder.buffers())) == 0


def test_initialisation_follows_recbole():
    torch.manual_seed(0)
    encoder = SASRecEncoder(n_items=500, hidden_size=64)
    sd = encoder.state_dict()
    for name, value in sd.items():
        if name.endswith("LayerNorm.weight"):
            assert torch.all(value == 1)
        elif name.endswith("bias"):
            assert torch.all(value == 0)
        else:
            assert abs(value.std().item() - 0.02) < 0.003, name
    assert encoder.item_embedding.padding_idx == 0


@pytest.mark.parametrize("n_heads", [1, 2, 4])
def test_matches_naive_reference(n_heads):
    encoder = make_encoder(n_heads=n_heads)
    seq, lengths = random_batch(1)
    seq[2, 0] = 0  # a masked (0) item inside a sequence must be ignored as a key too
    with torch.no_grad():
        got = encoder(seq, lengths)
    expected = naive_forward(encoder.state_dict(), seq, lengths, n_heads)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_output_ignores_slots_after_length():
    encoder = make_encoder()
    seq, lengths = random_batch(2)
    garbage = seq.clone()
    tail = torch.arange(MAX_LEN)[None, :] >= lengths[:, None]
    garbage[tail] = torch.randint(1, N_ITEMS + 1, (int(tail.sum()),))
    with torch.no_grad():
        torch.testing.assert_close(encoder(garbage, lengths), encoder(seq, lengths), atol=1e-6, rtol=1e-6)


def test_batch_width_does_not_matter():
    encoder = make_encoder()
    seq, lengths = random_batch(3, length=8)
    padded = torch.zeros(len(seq), MAX_LEN, dtype=torch.long)
    padded[:, :8] = seq
    with torch.no_grad():
        torch.testing.assert_close(encoder(seq, lengths), encoder(padded, lengths), atol=1e-6, rtol=1e-6)


def test_earlier_items_matter():
    encoder = make_encoder()
    seq = torch.tensor([[3, 4, 5, 6, 0, 0]])
    lengths = torch.tensor([4])
    changed = seq.clone()
    changed[0, 0] = 7
    with torch.no_grad():
        assert not torch.allclose(encoder(seq, lengths), encoder(changed, lengths))


def test_dropout_only_in_train_mode():
    encoder = make_encoder()
    seq, lengths = random_batch(3)
    with torch.no_grad():
        assert torch.equal(encoder(seq, lengths), encoder(seq, lengths))
        encoder.train()
        assert not torch.allclose(encoder(seq, lengths), encoder(seq, lengths))


@pytest.mark.parametrize("p", [0.25, 0.5, 0.3])
def test_cpu_dropout_keeps_with_probability_1_minus_p_and_rescales(p):
    dropout = Dropout(p).train()
    x = torch.randn(200_001)  # not a multiple of 8: the last 64-bit draw is used in part
    torch.manual_seed(0)
    out = dropout(x)
    torch.manual_seed(0)
    if p * 256 == int(p * 256):  # one random byte per element, kept when >= 256 p
        words = torch.empty((x.numel() + 7) // 8, dtype=torch.int64).random_(-(2**63), None)
        kept_by_formula = words.view(torch.uint8)[: x.numel()] >= 256 * p
    else:
        kept_by_formula = torch.rand_like(x) >= p
    assert torch.equal(out, x * kept_by_formula * (1.0 / (1.0 - p)))  # the plain formula, same draws
    kept = out != 0
    assert torch.equal(out[kept], x[kept] * (1.0 / (1.0 - p)))
    assert abs(kept.float().mean().item() - (1 - p)) < 0.005
    # neighbours share a 64-bit draw but not its bits: their keep indicators are uncorrelated
    k = kept.float()
    assert abs(torch.corrcoef(torch.stack([k[:-1], k[1:]]))[0, 1].item()) < 0.01


def test_cpu_dropout_mask_keeps_shape_and_dtype():
    x = torch.randn(3, 5, 7, dtype=torch.bfloat16)
    mask = cpu_keep_mask(x, 0.5)
    assert mask.shape == x.shape and mask.dtype == torch.bfloat16
    assert set(mask.unique().tolist()) <= {0.0, 2.0}


def test_score_helpers():
    encoder = make_encoder()
    h = torch.randn(3, HIDDEN)
    scores = encoder.full_scores(h)
    assert scores.shape == (3, N_ITEMS)
    torch.testing.assert_close(scores[:, 4], h @ encoder.item_embedding.weight[5])
    weights = encoder.item_weights()
    assert weights.shape == (N_ITEMS + 1, HIDDEN)
    assert weights.data_ptr() == encoder.item_embedding.weight.data_ptr()


def test_recbole_round_trip_gives_identical_outputs():
    encoder = make_encoder()
    rebuilt = encoder_from_recbole(to_recbole_state_dict(encoder), n_heads=N_HEADS).eval()
    assert (rebuilt.n_items, rebuilt.max_len, len(rebuilt.trm_encoder.layer)) == (N_ITEMS, MAX_LEN, N_LAYERS)
    seq, lengths = random_batch(4)
    with torch.no_grad():
        assert torch.equal(rebuilt(seq, lengths), encoder(seq, lengths))


def test_checkpoint_file_loads(tmp_path):
    encoder = make_encoder()
    state = to_recbole_state_dict(encoder) | {"aug_1.dense_1.weight": torch.zeros(2, 2)}
    path = tmp_path / "model.pth"
    torch.save({"state_dict": state, "config": {"model": "MCLRec", "hidden_size": HIDDEN}}, path)
    loaded = load_recbole_checkpoint(path)
    assert set(loaded) == set(encoder.state_dict())
    rebuilt = encoder_from_recbole(loaded, max_len=MAX_LEN).eval()
    seq, lengths = random_batch(5)
    with torch.no_grad():
        assert torch.equal(rebuilt(seq, lengths), encoder(seq, lengths))


class OpaqueConfig:
    """Stands in for RecBole's pickled Config object."""

    def __init__(self):
        self.final_config_dict = {"n_heads": N_HEADS, "hidden_size": HIDDEN}


class Exploit:
    """Unpickling it would run a shell command if the loader executed pickled code."""

    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/mclrec-pwned",))


def test_checkpoint_with_objects_loads_them_as_inert_placeholders(tmp_path):
    from mclrec.models.recbole import read_recbole_checkpoint

    encoder = make_encoder()
    path = tmp_path / "model.pth"
    torch.save({"state_dict": to_recbole_state_dict(encoder), "config": OpaqueConfig()}, path)
    state, settings = read_recbole_checkpoint(path)
    assert set(state) == set(encoder.state_dict()) and settings == {"n_heads": N_HEADS, "hidden_size": HIDDEN}


def test_pickled_code_is_never_run(tmp_path):
    from mclrec.models.recbole import read_recbole_checkpoint

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": to_recbole_state_dict(make_encoder()), "config": Exploit()}, path)
    with pytest.raises(MclrecError, match=r"refers to (posix|os|nt)\.system, which is not loaded"):
        read_recbole_checkpoint(path)
    assert not Path("/tmp/mclrec-pwned").exists()


def test_missing_key_is_named(tmp_path):
    state = to_recbole_state_dict(make_encoder())
    del state["trm_encoder.layer.1.feed_forward.dense_2.bias"]
    path = tmp_path / "model.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(MclrecError, match=r"missing keys: \['trm_encoder.layer.1.feed_forward.dense_2.bias'\]"):
        encoder_from_recbole(load_recbole_checkpoint(path))


def test_unexpected_key_and_shape_mismatch_are_named():
    state = to_recbole_state_dict(make_encoder())
    state["trm_encoder.layer.0.multi_head_attention.extra.weight"] = torch.zeros(1)
    state["trm_encoder.layer.1.multi_head_attention.query.weight"] = torch.zeros(HIDDEN, HIDDEN + 1)
    with pytest.raises(MclrecError) as info:
        encoder_from_recbole(state)
    message = str(info.value)
    assert "unexpected keys: ['trm_encoder.layer.0.multi_head_attention.extra.weight']" in message
    assert "trm_encoder.layer.1.multi_head_attention.query.weight: checkpoint (16, 17) vs encoder (16, 16)" in message


def test_bad_checkpoint_files(tmp_path):
    with pytest.raises(MclrecError, match="not found"):
        load_recbole_checkpoint(tmp_path / "absent.pth")
    path = tmp_path / "bare.pth"
    torch.save({"weights": {}}, path)
    with pytest.raises(MclrecError, match="'state_dict'"):
        load_recbole_checkpoint(path)
    with pytest.raises(MclrecError, match="max_len=50"):
        encoder_from_recbole(to_recbole_state_dict(make_encoder()), max_len=50)


@pytest.mark.parametrize("buckets", [(), (4,), (3, 6, 9), (2, 4, 8, 16)])
def test_fast_read_out_equals_the_reference_forward(buckets):
    encoder = make_encoder(5)
    seq, lengths = random_batch(7, batch=40)
    with torch.no_grad():
        reference = encoder(seq, lengths)
        torch.testing.assert_close(encode_last(encoder, seq, lengths), reference, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(encode(encoder, seq, lengths, buckets), reference, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("read_out", [encode, encode_packed])
def test_fast_read_out_matches_the_naive_reference(read_out):
    encoder = make_encoder(6)
    seq, lengths = random_batch(8, batch=10)
    with torch.no_grad():
        got = read_out(encoder, seq, lengths, (4, 8))
    torch.testing.assert_close(got, naive_forward(encoder.state_dict(), seq, lengths, N_HEADS), atol=1e-5, rtol=1e-5)


def test_buckets_keep_the_row_order_and_gradients_flow():
    encoder = make_encoder(7).train()
    seq, lengths = random_batch(9, batch=30)
    encoder.eval()
    with torch.no_grad():
        one_by_one = torch.cat([encoder(seq[i:i + 1], lengths[i:i + 1]) for i in range(30)])
    torch.testing.assert_close(encode(encoder, seq, lengths, (3, 6)).detach(), one_by_one, atol=1e-6, rtol=1e-6)
    out = encode(encoder, seq, lengths, (3, 6))
    (out * torch.randn_like(out)).sum().backward()  # a plain sum of LayerNorm outputs has zero gradient
    assert encoder.item_embedding.weight.grad[seq.unique()[1:]].abs().sum(dim=1).min() > 0
