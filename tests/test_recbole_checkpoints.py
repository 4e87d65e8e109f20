"""Real RecBole checkpoints in, without RecBole installed: a SASRec file written by RecBole 1.2.1 (fixture)."""

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mclrec.errors import MclrecError
from mclrec.evaluation.evaluate import recbole_item_rows
from mclrec.models.encoder import SASRecEncoder
from mclrec.models.recbole import (encoder_from_recbole, encoder_from_recbole_file, read_recbole_checkpoint,
                                   read_recbole_file, recbole_rows_to_ours, to_recbole_sasrec_state_dict)

from .conftest import rot

FIXTURES = Path(__file__).parent / "fixtures" / "recbole"
RECBOLE_121 = FIXTURES / "sasrec-recbole-1.2.1.pth"  # how it was made: fixtures/recbole/README.md


def test_recbole_121_file_reads_its_pickled_config_without_recbole():
    import subprocess
    import sys

    check = ("import sys; from mclrec.models.recbole import read_recbole_checkpoint; "
             f"read_recbole_checkpoint({str(RECBOLE_121)!r}); assert not [m for m in sys.modules if 'recbole' in m "
             "and not m.startswith('mclrec')], 'recbole was imported'")
    subprocess.run([sys.executable, "-c", check], check=True)  # a fresh interpreter: nothing of RecBole is imported
    state, settings = read_recbole_checkpoint(RECBOLE_121)
    assert (settings["model"], settings["n_heads"], settings["MAX_ITEM_LIST_LENGTH"]) == ("SASRec", 4, 10)
    assert state["item_embedding.weight"].shape == (41, 16)  # RecBole's layout: padding + 40 items


def test_recbole_121_encoder_gives_recboles_own_outputs():
    expected = torch.load(FIXTURES / "expected.pt", weights_only=True)  # SASRec.forward in RecBole 1.2.1
    encoder = encoder_from_recbole_file(RECBOLE_121, n_items=40).eval()
    with torch.no_grad():
        # to float32 rounding: RecBole's outputs were computed on another CPU, whose kernels may round differently
        torch.testing.assert_close(encoder(expected["item_seq"], expected["item_seq_len"]), expected["output"],
                                   rtol=1e-5, atol=1e-6)
        state, _ = read_recbole_checkpoint(RECBOLE_121)
        two_heads = encoder_from_recbole(state, n_items=40, n_heads=2).eval()  # a wrong head count shows
        assert not torch.allclose(two_heads(expected["item_seq"], expected["item_seq_len"]), expected["output"],
                                  atol=1e-6)


def test_mismatches_name_both_values(tmp_path):
    with pytest.raises(MclrecError, match="config says n_heads=4, --n-heads says 2"):
        encoder_from_recbole_file(RECBOLE_121, n_items=40, n_heads=2)
    with pytest.raises(MclrecError, match="41 rows, which fits neither 100 \\+ 1 .* nor 100 \\+ 2"):
        encoder_from_recbole_file(RECBOLE_121, n_items=100)
    state, _ = read_recbole_checkpoint(RECBOLE_121)
    path = tmp_path / "bare.pth"
    torch.save({"state_dict": state}, path)  # RecBole 0.2 style: no pickled config
    with pytest.raises(MclrecError, match="pass --n-heads"):
        encoder_from_recbole_file(path, n_items=40)
    assert encoder_from_recbole_file(path, n_items=40, n_heads=4).n_items == 40
    rotten = tmp_path / "rotten.pth"
    rotten.write_bytes(path.read_bytes())
    rot(rotten)
    with pytest.raises(MclrecError, match="rotten.pth: corrupt checkpoint: .* fails its CRC check"):
        encoder_from_recbole_file(rotten, n_items=40, n_heads=4)
    with pytest.raises(MclrecError, match="hidden size 16 is not a multiple of 3 attention heads \\(--n-heads\\)"):
        encoder_from_recbole_file(path, n_items=40, n_heads=3)


def test_what_a_real_recbole_file_says_about_its_item_numbering():
    """RecBole 1.2.1 pickles its Config (dataset, benchmark_filename, data_path) but not its item map
    (field2id_token): the numbering of the rows can be hinted at, never read from the file."""
    file = read_recbole_file(RECBOLE_121)
    assert file.item_id_tokens is None
    assert (file.settings["dataset"], file.settings["benchmark_filename"]) == ("tiny", None)  # RecBole split tiny.inter
    assert not [k for k in file.settings if "id_token" in k or "token_id" in k]
    data = SimpleNamespace(n_items=40)
    assert recbole_item_rows(file, data) == (None, "dataset")  # as before: rows taken as the dataset's item ids
    with pytest.raises(MclrecError, match="config says benchmark_filename None .dataset 'tiny'.: RecBole numbered"):
        recbole_item_rows(file, data, "recbole-export")
    trained_on_export = dataclasses.replace(
        file, settings={**file.settings, "benchmark_filename": ["train", "valid", "test"]})
    with pytest.raises(MclrecError, match="Say which numbering they use: --item-order recbole-export"):
        recbole_item_rows(trained_on_export, data)
    assert recbole_item_rows(trained_on_export, data, "dataset") == (None, "dataset")  # said explicitly


def test_rows_in_another_numbering_come_back_to_ours():
    torch.manual_seed(0)
    encoder = SASRecEncoder(n_items=7, max_len=5, hidden_size=8, n_layers=1, n_heads=2).eval()
    order = [3, 1, 7, 5, 2, 6, 4]  # RecBole id k holds our item order[k - 1]
    theirs = to_recbole_sasrec_state_dict(encoder, order)["item_embedding.weight"]  # 8 rows: [PAD] + 7 items
    weight = encoder.item_embedding.weight.detach()
    assert torch.equal(recbole_rows_to_ours(theirs, order), weight[:8])
    fork = torch.cat([theirs, weight[8:]])  # the MCLRec fork's layout: the spare row stays last
    assert torch.equal(recbole_rows_to_ours(fork, order), weight)
    with pytest.raises(MclrecError, match="permutation of our items 1..7"):
        recbole_rows_to_ours(theirs, [1, 2, 3, 4, 5, 6, 6])


def test_a_real_recbole_file_read_with_an_item_order_scores_its_items_as_ours():
    expected = torch.load(FIXTURES / "expected.pt", weights_only=True)
    order = torch.randperm(40, generator=torch.Generator().manual_seed(1)) + 1  # file row k: our item order[k - 1]
    as_is = encoder_from_recbole_file(RECBOLE_121, n_items=40).eval()
    moved = encoder_from_recbole_file(RECBOLE_121, n_items=40, item_order=order.tolist()).eval()
    with torch.no_grad():
        h = as_is(expected["item_seq"], expected["item_seq_len"])
        ours_seq = torch.where(expected["item_seq"] > 0, torch.cat([torch.zeros(1, dtype=torch.long), order])[
            expected["item_seq"]], 0)  # the same sequences in our item ids
        assert torch.allclose(moved(ours_seq, expected["item_seq_len"]), h, atol=1e-6)
        assert torch.equal(moved.full_scores(h)[:, order - 1], as_is.full_scores(h))
