"""`mclrec export recbole-checkpoint`: a trained encoder as a checkpoint RecBole 1.x's SASRec loads for the split
`mclrec export recbole` writes, item-embedding rows in RecBole's own item numbering.

RecBole is not installed here. The key names are those of a file real RecBole 1.2.1 wrote (fixtures/recbole/), the
row order is checked against RecBole's numbering replicated from the exported .inter files with pandas (factorize of
item_id over all rows, then item_id_list), independently of mclrec.export.recbole_item_order; the round trip through
RecBole 1.2.1 itself is fixtures/recbole-export/verify_in_recbole.py (run by hand in a side environment).
"""

import json
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
                              "loss_type": "CE", "benchmark_filename": ["train", "valid", "test"]}
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


# --- The reverse direction: a SASRec whose item rows are in RecBole's numbering of the exported files, read back ---


def evaluate_cli(tiny_dir: Path, out: Path, *args: str) -> tuple[dict, np.ndarray, str]:
    """`mclrec evaluate` on the tiny data (CPU, one noise ratio, length groups): its record, test ranks, messages."""
    res = runner.invoke(app, ["evaluate", "-d", "synthetic", "--data-dir", str(tiny_dir), "--params", PARAMS,
                              "--device", "cpu", "--noise", "0.2", "--groups", "--output", str(out), *args])
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text()), np.load(out.with_suffix(".ranks.npy")), " ".join(res.output.split())


def fails(*args: str) -> str:
    res = runner.invoke(app, list(args))
    assert res.exit_code != 0, res.output
    return " ".join(res.output.split())


def recommend_cli(tiny_dir: Path, out: Path, *args: str) -> pd.DataFrame:
    """`mclrec recommend --all-users --k 10` on the tiny data, as a frame (user, rank, item, score)."""
    res = runner.invoke(app, ["recommend", "-d", "synthetic", "--data-dir", str(tiny_dir), "--params", PARAMS,
                              "--device", "cpu", "--all-users", "--k", "10", "--no-progress", "--output", str(out),
                              *args])
    assert res.exit_code == 0, res.output
    return pd.read_csv(out, dtype={"user": str, "item": str})


def recbole_like(pth: Path, out: Path, **config) -> Path:
    """The exported file as RecBole itself would have saved a SASRec trained on the exported split: the same keys
    and rows (RecBole's order), but no `item_id_tokens` and no `mclrec` entry; `config` entries added."""
    ckpt = torch.load(pth, map_location="cpu", weights_only=True)
    del ckpt["item_id_tokens"], ckpt["mclrec"]
    ckpt["config"].update(config)
    torch.save(ckpt, out)
    return out


@pytest.fixture(scope="module")
def ours(run, tiny_dir, tmp_path_factory) -> tuple[dict, np.ndarray]:
    """Our own evaluation of the trained checkpoint: (record, test ranks)."""
    record, ranks, _ = evaluate_cli(tiny_dir, tmp_path_factory.mktemp("ours") / "ours.json", "--checkpoint",
                                    str(run / "best.pt"))
    return record, ranks


def same_results(theirs: dict, ours: dict) -> bool:
    return all(theirs[key] == ours[key] for key in ("metrics", "noise", "groups"))


def test_item_order_recbole_export_reads_a_recbole_trained_file_as_ours(exported, ours, tiny_dir, tmp_path):
    _, pth = exported
    bare = recbole_like(pth, tmp_path / "bare.pth")
    assert "item_id_tokens" not in torch.load(bare, weights_only=True)
    rb = ["--checkpoint", str(bare), "--checkpoint-format", "recbole"]
    theirs, ranks, said = evaluate_cli(tiny_dir, tmp_path / "export.json", *rb, "--item-order", "recbole-export")
    assert same_results(theirs, ours[0]) and np.array_equal(ranks, ours[1])  # exactly: every metric, every rank
    assert theirs["config"]["item_order"] == "recbole-export" and "by --item-order recbole-export" in said

    unmoved, unmoved_ranks, said = evaluate_cli(tiny_dir, tmp_path / "dataset.json", *rb, "--item-order", "dataset")
    assert unmoved["config"]["item_order"] == "dataset" and "moved" not in said
    assert not np.array_equal(unmoved_ranks, ours[1])  # the option matters: rows taken as ours rank other items
    assert unmoved["metrics"]["test"]["HR@10"] < ours[0]["metrics"]["test"]["HR@10"] / 2
    assert "Say which numbering they use" in fails(  # the exported config names the split it was exported for
        "evaluate", "-d", "synthetic", "--data-dir", str(tiny_dir), "--params", PARAMS, "--device", "cpu", "--output",
        str(tmp_path / "refused.json"), *rb)
    hintless = torch.load(bare, weights_only=True)
    del hintless["config"]["benchmark_filename"]
    torch.save(hintless, tmp_path / "hintless.pth")
    default, default_ranks, _ = evaluate_cli(tiny_dir, tmp_path / "default.json", "--checkpoint",
                                             str(tmp_path / "hintless.pth"), "--checkpoint-format", "recbole")
    assert default["metrics"] == unmoved["metrics"] and np.array_equal(default_ranks, unmoved_ranks)


def test_recommend_with_item_order_recbole_export_gives_our_top_k(run, exported, tiny_dir, tmp_path):
    _, pth = exported
    bare = recbole_like(pth, tmp_path / "bare.pth")
    mine = recommend_cli(tiny_dir, tmp_path / "ours.csv", "--checkpoint", str(run / "best.pt"))
    rb = ["--checkpoint", str(bare), "--checkpoint-format", "recbole"]
    theirs = recommend_cli(tiny_dir, tmp_path / "export.csv", *rb, "--item-order", "recbole-export")
    assert theirs[["user", "rank", "item"]].equals(mine[["user", "rank", "item"]])
    assert np.allclose(theirs["score"], mine["score"], atol=1e-5)
    unmoved = recommend_cli(tiny_dir, tmp_path / "dataset.csv", *rb, "--item-order", "dataset")
    assert (unmoved["item"] != mine["item"]).mean() > 0.5
    tokens = recommend_cli(tiny_dir, tmp_path / "tokens.csv", "--checkpoint", str(pth), "--checkpoint-format",
                           "recbole")  # item_id_tokens used by themselves
    assert tokens[["user", "rank", "item"]].equals(mine[["user", "rank", "item"]])


def test_item_id_tokens_are_used_by_themselves_and_checked(exported, ours, tiny, tiny_dir, tmp_path):
    _, pth = exported
    rb = ["--checkpoint-format", "recbole"]
    theirs, ranks, said = evaluate_cli(tiny_dir, tmp_path / "tokens.json", "--checkpoint", str(pth), *rb)
    assert same_results(theirs, ours[0]) and np.array_equal(ranks, ours[1])
    assert theirs["config"]["item_order"] == "item_id_tokens" and "by the file's item_id_tokens" in said
    agreeing, _, _ = evaluate_cli(tiny_dir, tmp_path / "agree.json", "--checkpoint", str(pth), *rb, "--item-order",
                                  "recbole-export")  # an order that agrees with the file's list is fine
    assert agreeing["metrics"] == ours[0]["metrics"]

    base = ["evaluate", "-d", "synthetic", "--data-dir", str(tiny_dir), "--params", PARAMS, "--device", "cpu",
            "--output", str(tmp_path / "x.json"), *rb]
    written = torch.load(pth, weights_only=True)
    tokens, rows = written["item_id_tokens"], written["mclrec"]["recbole_to_mclrec_item"]
    first = next(k for k in range(1, len(rows)) if rows[k] != k)  # the first row that is not our item of its number
    message = fails(*base, "--checkpoint", str(pth), "--item-order", "dataset")
    assert str(pth) in message and "contradict --item-order dataset" in message
    assert f"row {first} holds item {tokens[first]!r}" in message

    def tampered(name: str, change) -> str:
        ckpt = torch.load(pth, weights_only=True)
        change(ckpt["item_id_tokens"])
        torch.save(ckpt, tmp_path / name)
        return fails(*base, "--checkpoint", str(tmp_path / name))

    message = tampered("unknown.pth", lambda t: t.__setitem__(3, "no-such-item"))
    assert str(tmp_path / "unknown.pth") in message and "row 3: 'no-such-item'" in message
    message = tampered("twice.pth", lambda t: t.__setitem__(5, t[2]))
    assert str(tmp_path / "twice.pth") in message and f"lists {tokens[2]!r} twice (rows 2 and 5)" in message
    message = tampered("short.pth", lambda t: t.pop())
    assert f"lists {tiny.n_items - 1} items, the dataset has {tiny.n_items}" in message
    assert not (tmp_path / "x.json").exists()


def test_a_recbole_config_of_the_exported_files_must_say_its_item_order(exported, ours, run, tiny_dir, tmp_path):
    _, pth = exported
    hinted = recbole_like(pth, tmp_path / "hinted.pth", benchmark_filename=["train", "valid", "test"],
                          data_path=str(tmp_path))  # what RecBole 1.x pickles after training on the export
    base = ["evaluate", "-d", "synthetic", "--data-dir", str(tiny_dir), "--params", PARAMS, "--device", "cpu",
            "--output", str(tmp_path / "x.json"), "--checkpoint-format", "recbole"]
    message = fails(*base, "--checkpoint", str(hinted))
    assert str(hinted) in message and "benchmark_filename ['train', 'valid', 'test']" in message
    assert "--item-order recbole-export" in message and "--item-order dataset" in message
    message = fails("recommend", "-d", "synthetic", "--data-dir", str(tiny_dir), "--params", PARAMS, "--device", "cpu",
                    "--all-users", "--checkpoint", str(hinted), "--checkpoint-format", "recbole")
    assert "Say which numbering they use" in message
    theirs, ranks, _ = evaluate_cli(tiny_dir, tmp_path / "hinted.json", "--checkpoint", str(hinted),
                                    "--checkpoint-format", "recbole", "--item-order", "recbole-export")
    assert same_results(theirs, ours[0]) and np.array_equal(ranks, ours[1])

    own_split = recbole_like(pth, tmp_path / "own-split.pth", benchmark_filename=None)  # RecBole split a .inter file
    message = fails(*base, "--checkpoint", str(own_split), "--item-order", "recbole-export")
    assert str(own_split) in message and "benchmark_filename None" in message
    message = fails(*base, "--checkpoint", str(run / "best.pt"), "--checkpoint-format", "mclrec", "--item-order",
                    "recbole-export")
    assert "applies to RecBole checkpoints" in message
    message = fails(*base, "--checkpoint", str(pth), "--checkpoint-format", "mclrec")  # the format left at its default
    assert "not an mclrec checkpoint" in message and "read those with --checkpoint-format recbole" in message
    message = fails(*base, "--checkpoint", str(pth), "--item-order", "ours")  # a closed choice: the CLI lists them
    assert "'ours'" in message and "'dataset', 'recbole-export'" in message
