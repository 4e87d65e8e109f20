"""`mclrec export recbole-checkpoint`: a trained encoder as a checkpoint RecBole 1.x's SASRec loads for the split
`mclrec export recbole` writes, item-embedding rows in RecBole's own item numbering.

RecBole is not installed here. The key names are those of a file real RecBole 1.2.1 wrote (fixtures/recbole/), the
row order is checked against RecBole's numbering replicated from the exported .inter files with pandas (factorize of
item_id over all rows, then item_id_list), independently of mclrec.export.recbole_item_order; the round trip through
RecBole 1.2.1 itself is fixtures/recbole-export/verify_in_recbole.py (run by hand in a side environment).
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from mclrec import config
from mclrec.checkpoint import load_checkpoint, save_checkpoint
from mclrec.cli import app
from mclrec.data.processed import padded_inputs
from mclrec.models.parts import build_parts
from mclrec.models.recbole import encoder_from_recbole_file, read_recbole_checkpoint
from mclrec.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
PARAMS = str(ROOT / "params.yaml")
RECBOLE_121 = ROOT / "tests" / "fixtures" / "recbole" / "sasrec-recbole-1.2.1.pth"
runner = CliRunner()


@pytest.fixture(scope="module")
def run(tiny, params, tmp_path_factory) -> Path:
    """A one-epoch SASRec on the tiny data (max_len 20, as the tiny data was processed)."""
    folder = tmp_path_factory.mktemp("recbole-ckpt") / "run"
    cfg = config.run_config(params, "synthetic", "sasrec").replace(device="cpu", batch_size=128, max_len=20,
                                                                    max_epochs=1)
    train(cfg, tiny, folder, progress=False)
    return folder


@pytest.fixture(scope="module")
def exported(run, tiny_dir, tmp_path_factory) -> tuple[Path, Path]:
    """The split (`export recbole`) and the checkpoint (`export recbole-checkpoint`): (split folder, .pth)."""
    out = tmp_path_factory.mktemp("recbole-export")
    res = runner.invoke(app, ["export", "recbole", "synthetic", "--data-dir", str(tiny_dir), "--out", str(out),
                              "--params", PARAMS])
    assert res.exit_code == 0, res.output
    pth = out / "synthetic" / "sasrec.pth"
    res = runner.invoke(app, ["export", "recbole-checkpoint", "-d", "synthetic", "-m", "sasrec", "--checkpoint",
                              str(run / "best.pt"), "--out", str(pth), "--data-dir", str(tiny_dir), "--params", PARAMS])
    assert res.exit_code == 0, res.output
    assert "in RecBole's item order" in res.output
    return out / "synthetic", pth


def recbole_tokens(folder: Path) -> list[str]:
    """RecBole 1.2.1's item numbering of benchmark files (Dataset._load_inter_feat, _remap_ID_all, _remap): the files
    read as strings and concatenated train, valid, test; item_id and its alias item_id_list factorized together,
    item_id column first; [PAD] is id 0."""
    frames = [pd.read_csv(folder / f"synthetic.{split}.inter", sep="\t", dtype=str, engine="python")
              for split in ("train", "valid", "test")]
    inter = pd.concat(frames, ignore_index=True)
    lists = [np.array(s.split(" ")) for s in inter["item_id_list:token_seq"].fillna("")]
    tokens = np.concatenate([inter["item_id:token"].to_numpy(), np.concatenate(lists)])
    _, uniques = pd.factorize(tokens)
    return ["[PAD]"] + list(uniques)


def recbole_full_keys() -> set[str]:
    """Every state-dict key of SASRec in a file real RecBole 1.2.1 wrote (n_layers 2)."""
    from mclrec.models import recbole

    checkpoint = torch.load(RECBOLE_121, map_location="cpu", weights_only=False,
                            pickle_module=recbole._restricted_pickle)
    return set(checkpoint["state_dict"])


def test_file_is_recboles_sasrec_state_dict_in_recboles_item_order(exported, run, tiny, tiny_dir):
    folder, pth = exported
    ckpt = torch.load(pth, map_location="cpu", weights_only=True)  # plain values and tensors only: no pickled Config
    assert {"state_dict", "other_parameter", "config", "epoch", "cur_step", "best_valid_score"} <= set(ckpt)
    assert ckpt["other_parameter"] is None and "optimizer" not in ckpt
    ours = load_checkpoint(run / "best.pt")
    settings = ours["config"]
    assert ckpt["config"] == {"model": "SASRec", "dataset": "synthetic", "n_layers": settings["n_layers"],
                              "n_heads": settings["n_heads"], "hidden_size": settings["hidden_size"],
                              "inner_size": settings["inner_size"], "hidden_dropout_prob": settings["hidden_dropout"],
                              "attn_dropout_prob": settings["attn_dropout"], "hidden_act": "gelu",
                              "layer_norm_eps": settings["layer_norm_eps"],
                              "initializer_range": settings["initializer_range"], "MAX_ITEM_LIST_LENGTH": 20,
                              "loss_type": "CE"}
    state = ckpt["state_dict"]
    assert settings["n_layers"] == 2 and set(state) == recbole_full_keys()  # RecBole 1.2.1's own names, nothing more
    encoder = ours["modules"]["encoder"]
    n, hidden = tiny.n_items, settings["hidden_size"]
    assert encoder["item_embedding.weight"].shape == (n + 2, hidden)  # ours: padding, items, spare mask row
    assert state["item_embedding.weight"].shape == (n + 1, hidden)  # RecBole's n_items = n + 1 ([PAD] counted)
    for key, value in state.items():
        if key != "item_embedding.weight":
            assert torch.equal(value, encoder[key]), key

    tokens = recbole_tokens(folder)  # RecBole's numbering, replicated from the files
    assert len(tokens) == n + 1 and ckpt["item_id_tokens"] == tokens
    mapping = pd.read_csv(folder / "synthetic.items.tsv", sep="\t", dtype=str)
    our_id = dict(zip(mapping["original_id"], mapping["item"].astype(int)))
    rows = [0] + [our_id[t] for t in tokens[1:]]
    assert rows != list(range(n + 1))  # the orders do differ: an unpermuted export would be wrong
    assert torch.equal(state["item_embedding.weight"], encoder["item_embedding.weight"][rows])
    assert ckpt["mclrec"]["recbole_to_mclrec_item"] == rows and ckpt["mclrec"]["n_items"] == n


def test_scores_in_recbole_ids_are_ours_permuted(exported, run, tiny):
    """The exported file, read back as a RecBole checkpoint, ranks every test user's items as our model does."""
    _, pth = exported
    ours = load_checkpoint(run / "best.pt")
    encoder = build_parts(ours["config"], tiny.n_items).encoder
    encoder.load_state_dict(ours["modules"]["encoder"])
    theirs = encoder_from_recbole_file(pth, n_items=tiny.n_items).eval()  # n_heads from the exported config
    rows = torch.tensor(torch.load(pth, weights_only=True)["mclrec"]["recbole_to_mclrec_item"])
    to_recbole = torch.empty_like(rows)
    to_recbole[rows] = torch.arange(len(rows))
    inputs, lengths, targets, _ = (torch.as_tensor(a) for a in padded_inputs(tiny.test, tiny.max_len))
    with torch.no_grad():
        ours_scores = encoder.eval().full_scores(encoder(inputs, lengths))
        their_scores = theirs.full_scores(theirs(to_recbole[inputs], lengths))  # column j: RecBole item j + 1
    assert torch.allclose(their_scores[:, to_recbole[1:] - 1], ours_scores, atol=1e-5)
    ours_rank = (ours_scores > ours_scores.gather(1, targets[:, None] - 1)).sum(1)
    their_target = to_recbole[targets][:, None] - 1
    assert torch.equal((their_scores > their_scores.gather(1, their_target)).sum(1), ours_rank)
    _, settings = read_recbole_checkpoint(pth)
    assert settings["n_heads"] == ours["config"]["n_heads"]


def test_written_atomically_and_replaced(exported, run, tiny_dir):
    folder, pth = exported
    first = pth.read_bytes()
    res = runner.invoke(app, ["export", "recbole-checkpoint", "-d", "synthetic", "-m", "sasrec", "--checkpoint",
                              str(run / "best.pt"),
                              "--out", str(pth), "--data-dir", str(tiny_dir), "--params", PARAMS])
    assert res.exit_code == 0, res.output
    assert pth.read_bytes() == first  # deterministic
    assert not list(folder.glob(".*.tmp"))


def test_default_paths_mirror_evaluate(run, tiny_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    best = tmp_path / "models" / "synthetic" / "sasrec" / "seed3" / "best.pt"
    best.parent.mkdir(parents=True)
    best.write_bytes((run / "best.pt").read_bytes())
    res = runner.invoke(app, ["export", "recbole-checkpoint", "-d", "synthetic", "-m", "sasrec", "--seed", "3",
                              "--data-dir", str(tiny_dir), "--params", PARAMS])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "export" / "recbole" / "synthetic" / "sasrec.seed3.pth").is_file()


def test_errors_name_the_file_and_both_values(run, tiny, tiny_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["export", "recbole-checkpoint", "--data-dir", str(tiny_dir), "--params", PARAMS]

    def fails(*args: str) -> str:
        res = runner.invoke(app, base + list(args))
        assert res.exit_code != 0, res.output
        return " ".join(res.output.split())

    assert "datasets.nope: no such dataset" in fails("-d", "nope", "-m", "sasrec")
    assert "variants.nope: no such variant" in fails("-d", "synthetic", "-m", "nope")
    assert "give --variant" in fails("-d", "synthetic")
    assert "give --out FILE" in fails("-d", "synthetic", "--checkpoint", str(run / "best.pt"))
    missing = fails("-d", "synthetic", "-m", "sasrec")
    assert str(Path("models/synthetic/sasrec/seed0/best.pt")) in missing and "not found" in missing
    assert "not found" in fails("-d", "synthetic", "--checkpoint", "nowhere.pt", "--out", "x.pth")

    ours = load_checkpoint(run / "best.pt")
    other = build_parts(ours["config"], tiny.n_items + 7).encoder
    wrong = tmp_path / "other.pt"
    save_checkpoint(wrong, {**{k: v for k, v in ours.items() if k != "format_version"},
                            "modules": {"encoder": other.state_dict()}, "n_items": tiny.n_items + 7})
    message = fails("-d", "synthetic", "--checkpoint", str(wrong), "--out", str(tmp_path / "x.pth"))
    assert str(wrong) in message and f"{tiny.n_items + 7} items" in message and f"has {tiny.n_items}" in message
    assert not (tmp_path / "x.pth").exists()
