"""Real RecBole checkpoints in, without RecBole installed: a SASRec file written by RecBole 1.2.1 (fixture)."""

from pathlib import Path

import pytest
import torch

from mclrec.errors import MclrecError
from mclrec.models.recbole import encoder_from_recbole, encoder_from_recbole_file, read_recbole_checkpoint

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
        assert torch.equal(encoder(expected["item_seq"], expected["item_seq_len"]), expected["output"])
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
