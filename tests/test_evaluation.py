"""Evaluation: chunked full ranking, robustness studies, the evaluate CLI and RecBole checkpoint interop."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mclrec.cli import app
from mclrec.evaluation.metrics import metrics_from_ranks, target_ranks
from mclrec.evaluation import ranking
from mclrec.evaluation.ranking import rank_all, rows_per_chunk
from mclrec.evaluation.robustness import insert_noise, length_groups
from mclrec.models.encoder import SASRecEncoder
from mclrec.models.recbole import to_recbole_state_dict
from mclrec.data.instances import Instances, eval_instances
from mclrec.training.trainer import train

from .conftest import ROOT

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tiny, params, tmp_path_factory):
    """A one-epoch sasrec run on the tiny dataset."""
    from mclrec import config

    cfg = config.resolve_run(params, "synthetic", "sasrec")
    cfg.update(device="cpu", batch_size=128, max_len=20, max_epochs=1)
    run_dir = tmp_path_factory.mktemp("run")
    train(cfg, tiny, run_dir, progress=False)
    return run_dir


def test_chunked_ranking_equals_one_big_product(tiny):
    torch.manual_seed(0)
    encoder = SASRecEncoder(tiny.n_items, 20).eval()
    test = eval_instances(tiny, "test", torch.device("cpu"))
    with torch.no_grad():
        naive = target_ranks(encoder.full_scores(encoder(test.seq, test.lengths)), test.targets)
    assert torch.equal(rank_all(encoder, test, batch_size=7), naive)
    # a score budget of 3 users' scores: chunks of 3 rows, the same ranks
    assert torch.equal(rank_all(encoder, test, batch_size=2048, score_budget=3 * tiny.n_items), naive)


def test_cpu_score_blocks_give_the_same_ranks(tiny, monkeypatch):
    torch.manual_seed(0)
    encoder = SASRecEncoder(tiny.n_items, 20).eval()
    test = eval_instances(tiny, "test", torch.device("cpu"))
    whole = rank_all(encoder, test, batch_size=2048)
    for rows in (1, 5):  # blocks of one row, and of five
        monkeypatch.setattr(ranking, "CPU_SCORE_BLOCK", rows * tiny.n_items)
        assert torch.equal(rank_all(encoder, test, batch_size=2048), whole)


def test_score_budget_bounds_the_users_scored_at_once():
    assert rows_per_chunk(2048, 12_101) == 2048  # Beauty: the batch size
    assert rows_per_chunk(2048, 1_000_000) == 134  # 10^6 items: 134 x 10^6 floats, 512 MiB
    assert rows_per_chunk(2048, 10**9) == 1  # never fewer than one user


def test_noise_inserts_the_requested_share_and_keeps_the_original_order():
    seq = torch.tensor([[1, 2, 3, 4, 0, 0, 0, 0], [5, 6, 7, 8, 9, 10, 11, 12]])
    lengths = torch.tensor([4, 8])
    inst = Instances(seq, lengths, torch.tensor([1, 2]))
    same = insert_noise(inst, 0.0, 1000, 8, torch.Generator().manual_seed(0))
    assert torch.equal(same.seq, seq) and torch.equal(same.lengths, lengths)
    noisy = insert_noise(inst, 0.5, 1000, 8, torch.Generator().manual_seed(0))
    assert noisy.lengths.tolist() == [6, 8]  # 4 + 2; 8 + 4 cut to the last 8
    row = noisy.seq[0, :6].tolist()
    assert [x for x in row if x in (1, 2, 3, 4)] == [1, 2, 3, 4]
    assert noisy.seq[0, 6:].tolist() == [0, 0]


def test_length_groups():
    groups = length_groups(np.array([5, 6, 8, 9, 20, 5]))
    assert groups["=5"].tolist() == [True, False, False, False, False, True]
    assert groups["6-8"].tolist() == [False, True, True, False, False, False]
    assert groups[">8"].tolist() == [False, False, False, True, True, False]
    assert list(groups) == ["=5", "6-8", ">8"]  # 5-core data: the paper's groups only


def test_users_shorter_than_5_get_their_own_group():
    """A dataset preprocessed with user_k < 5: every user is in exactly one group."""
    groups = length_groups(np.array([3, 5, 4, 9]))
    assert list(groups) == ["<5", "=5", "6-8", ">8"]
    assert groups["<5"].tolist() == [True, False, True, False]
    assert np.stack(list(groups.values())).sum(axis=0).tolist() == [1, 1, 1, 1]


def _evaluate(*args):
    return runner.invoke(app, ["evaluate", "--params", str(ROOT / "params.yaml"), "--dataset", "synthetic",
                               "--device", "cpu", *args])


@pytest.fixture
def keep_threads():
    """Restore torch's thread count after a command that sets it in this process."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_evaluate_threads_set_torchs_and_leave_the_numbers(trained, tiny_dir, tmp_path, keep_threads):
    metrics, other = {}, 2 if torch.get_num_threads() == 1 else 1  # a count the process does not already have
    for threads in (None, other):
        out = tmp_path / f"out{threads}.json"
        args = ["--checkpoint", str(trained / "best.pt"), "--data-dir", str(tiny_dir), "--output", str(out)]
        res = _evaluate(*args, *(["--threads", str(threads)] if threads else []))
        assert res.exit_code == 0, res.output
        metrics[threads] = json.loads(out.read_text())["metrics"]
        if threads:
            assert json.loads(out.read_text())["environment"]["threads"] == other
    assert metrics[None] == metrics[other]


def test_evaluate_cli_writes_the_documented_schema(trained, tiny_dir, tmp_path):
    out = tmp_path / "out.json"
    res = _evaluate("--checkpoint", str(trained / "best.pt"), "--data-dir", str(tiny_dir), "--output", str(out),
                    "--noise", "0.1", "--noise", "0.2", "--groups")
    assert res.exit_code == 0, res.output
    record = json.loads(out.read_text())
    for key in ("dataset", "variant", "model", "seed", "metrics", "best_epoch", "train_seconds", "config",
                "checkpoint", "environment"):
        assert key in record
    assert record["variant"] == "sasrec" and record["best_epoch"] == 1
    env = record["environment"]
    for package in ("torch", "numpy", "pandas", "pyarrow", "mclrec"):
        assert env[package] and env["training"][package] == env[package]
    assert set(env["git"]) == {"commit", "dirty"} and env["training"]["threads"] >= 1
    assert set(record["noise"]) == {"0.1", "0.2"}
    assert sum(g["n_users"] for g in record["groups"].values()) == len(np.load(out.with_suffix(".ranks.npy")))


def test_a_variant_that_is_not_the_checkpoints_is_refused_before_its_results_are_filed(trained, tiny_dir, tmp_path,
                                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = _evaluate("-m", "mclrec", "--checkpoint", str(trained / "best.pt"), "--data-dir", str(tiny_dir))
    said = " ".join(res.output.split())
    assert res.exit_code == 1 and "a 'sasrec' run, which -m mclrec would file as mclrec's results" in said, said
    assert not (tmp_path / "results").exists()
    res = _evaluate("-m", "sasrec", "--checkpoint", str(trained / "best.pt"), "--data-dir", str(tiny_dir))
    assert res.exit_code == 0 and (tmp_path / "results" / "synthetic" / "sasrec.json").is_file()


def test_recbole_checkpoint_gives_the_same_numbers(trained, tiny_dir, tmp_path):
    from mclrec.checkpoint import load_checkpoint

    state = load_checkpoint(trained / "best.pt")["modules"]["encoder"]
    encoder = SASRecEncoder(len(state["item_embedding.weight"]) - 2, 20)
    encoder.load_state_dict(state)
    torch.save({"state_dict": to_recbole_state_dict(encoder), "config": {"model": "SASRec"}}, tmp_path / "rb.pth")
    ours, theirs = tmp_path / "ours.json", tmp_path / "theirs.json"
    assert _evaluate("--checkpoint", str(trained / "best.pt"), "--data-dir", str(tiny_dir), "--output", str(ours)).exit_code == 0
    res = _evaluate("--checkpoint", str(tmp_path / "rb.pth"), "--checkpoint-format", "recbole", "--n-heads", "2",
                    "--data-dir", str(tiny_dir), "--output", str(theirs))
    assert res.exit_code == 0, res.output
    assert json.loads(ours.read_text())["metrics"] == json.loads(theirs.read_text())["metrics"]


def test_recbole_checkpoint_with_missing_keys_is_refused(trained, tiny, tiny_dir, tmp_path):
    encoder = SASRecEncoder(tiny.n_items, 20)
    state = to_recbole_state_dict(encoder)
    del state["trm_encoder.layer.1.feed_forward.dense_2.weight"]
    torch.save({"state_dict": state}, tmp_path / "rb.pth")
    res = _evaluate("--checkpoint", str(tmp_path / "rb.pth"), "--checkpoint-format", "recbole", "--n-heads", "2",
                    "--data-dir", str(tiny_dir), "--output", str(tmp_path / "x.json"))
    assert res.exit_code == 1
    assert "trm_encoder.layer.1.feed_forward.dense_2.weight" in res.output
    assert not (tmp_path / "x.json").exists()


def test_checkpoint_from_another_dataset_is_refused(trained, tmp_path):
    from mclrec.data.preprocess import preprocess
    from mclrec.data.synth import generate_synthetic

    generate_synthetic(tmp_path / "raw.txt", seed=9, n_users=200, n_items=60, n_clusters=3, mean_length=8,
                       min_length=5, stay_probability=0.8)
    preprocess(tmp_path / "raw.txt", "seqtxt", 5, 5, 20, tmp_path / "other")
    res = _evaluate("--checkpoint", str(trained / "best.pt"), "--data-dir", str(tmp_path / "other"),
                    "--output", str(tmp_path / "x.json"))
    assert res.exit_code == 1 and "another dataset" in res.output
    assert not (tmp_path / "x.json").exists()


def test_truncated_checkpoint_is_detected(trained, tiny_dir, tmp_path):
    broken = tmp_path / "best.pt"
    broken.write_bytes((trained / "best.pt").read_bytes()[:1000])
    res = _evaluate("--checkpoint", str(broken), "--data-dir", str(tiny_dir), "--output", str(tmp_path / "x.json"))
    assert res.exit_code == 1 and "truncated or corrupt" in res.output


class ForeignConfig:
    """Stands for a class a foreign checkpoint pickles (RecBole pickles its Config)."""


@pytest.mark.parametrize("content,fmt,message", [
    (b"garbage\n", "mclrec", "unreadable checkpoint (truncated or corrupt?): Unsupported operand"),
    (b"hello\n", "mclrec", "unreadable checkpoint (truncated or corrupt?): KeyError"),
    (b"", "mclrec", "empty checkpoint file"),
    ("foreign", "mclrec", "it pickles tests.test_evaluation.ForeignConfig, and only tensors and plain containers are "
                          "loaded (a RecBole checkpoint? evaluate and recommend read those with --checkpoint-format "
                          "recbole)"),
    (b"garbage\n", "recbole", "not a readable RecBole checkpoint (invalid literal for int()"),
    (b"", "recbole", "not a readable RecBole checkpoint (Ran out of input)"),
])
def test_unreadable_checkpoints_are_one_line_errors(tiny_dir, tmp_path, content, fmt, message):
    path = tmp_path / "model.pt"
    if content == "foreign":
        torch.save({"state_dict": {}, "config": ForeignConfig()}, path)
    else:
        path.write_bytes(content)
    res = _evaluate("--checkpoint", str(path), "--checkpoint-format", fmt, "--data-dir", str(tiny_dir),
                    "--output", str(tmp_path / "x.json"))
    # one line, and none of torch's advice to load the file with code execution allowed
    assert res.exit_code == 1 and message in " ".join(res.output.split()) and "weights_only" not in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "x.json").exists()


def test_metrics_from_ranks_matches_hand_computation():
    m = metrics_from_ranks(torch.tensor([0, 1, 30]), (5,))
    assert m["HR@5"] == pytest.approx(2 / 3)
    assert m["NDCG@5"] == pytest.approx((1 + 1 / np.log2(3)) / 3)
    assert m["MRR@5"] == pytest.approx((1 + 0.5) / 3)


def test_evaluate_records_and_says_which_settings_params_yaml_does_not_give_the_run(trained, tiny_dir, tmp_path):
    from mclrec.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(trained / "best.pt")
    out = tmp_path / "plain.json"
    res = _evaluate("--checkpoint", str(trained / "best.pt"), "--data-dir", str(tiny_dir), "--output", str(out))
    beyond = json.loads(out.read_text()).get("settings_beyond_params")
    # the fixture trains with a smaller batch and fewer epochs than params.yaml gives synthetic/sasrec
    assert beyond == {k: ckpt["config"][k] for k in beyond} and "batch_size" in beyond and "seed" not in beyond
    assert "note:" in res.output and "--set batch_size=" in " ".join(res.output.split())
    hand = tmp_path / "hand.pt"
    save_checkpoint(hand, {**{k: v for k, v in ckpt.items() if k != "format_version"},
                           "config": {**ckpt["config"], "lr": 0.123}})
    res = _evaluate("--checkpoint", str(hand), "--data-dir", str(tiny_dir), "--output", str(tmp_path / "hand.json"))
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "hand.json").read_text())["settings_beyond_params"]["lr"] == 0.123
    assert "--set lr=0.123" in " ".join(res.output.split())


def test_grid_cells_and_published_mclrec_checkpoints_are_filed_as_the_workflow_names_them(trained, tiny_dir, tmp_path,
                                                                                           params, monkeypatch):
    import hashlib

    import yaml

    from mclrec import config
    from mclrec.checkpoint import load_checkpoint, save_checkpoint
    from mclrec.run_config import RunConfig

    monkeypatch.chdir(tmp_path)
    ckpt = load_checkpoint(trained / "best.pt")
    cell = config.resolve_run(params, "synthetic", "mclrec", {"lambda_cl1": 0.5, "beta": 1.0})
    cell = RunConfig.of(cell).on_device("cpu").replace(max_len=ckpt["config"]["max_len"]).to_dict()
    grid = tmp_path / "models" / "synthetic" / "grid" / "l0.5-b1.0" / "seed0" / "best.pt"
    save_checkpoint(grid, {**{k: v for k, v in ckpt.items() if k != "format_version"}, "config": cell})
    out = tmp_path / "results" / "synthetic" / "grid" / "l0.5-b1.0" / "seed0.json"
    res = _evaluate("--variant", "mclrec", "--checkpoint", str(grid), "--output", str(out), "--data-dir",
                    str(tiny_dir))  # the workflow's command for a grid cell
    assert res.exit_code == 0, res.output
    assert "settings_beyond_params" not in json.loads(out.read_text()) and "note:" not in res.output
    res = _evaluate("-m", "grid/l0.5-b1.0", "--checkpoint", str(grid), "--data-dir", str(tiny_dir))
    assert res.exit_code == 0 and (tmp_path / "results" / "synthetic" / "grid" / "l0.5-b1.0.json").is_file()
    res = _evaluate("-m", "mclrec", "--checkpoint", str(grid), "--data-dir", str(tiny_dir))  # filed as plain mclrec
    assert res.exit_code == 1 and "a 'grid/l0.5-b1.0' run, which -m mclrec would file" in " ".join(res.output.split())
    plain = tmp_path / "models" / "synthetic" / "mclrec" / "seed0" / "best.pt"
    plain.parent.mkdir(parents=True)
    plain.write_bytes(grid.read_bytes())
    res = _evaluate("-m", "grid/l0.5-b1.0", "--checkpoint", str(plain), "--data-dir", str(tiny_dir))
    assert res.exit_code == 1 and "a 'mclrec' run, which -m grid/l0.5-b1.0 would" in " ".join(res.output.split())
    assert not (tmp_path / "results" / "synthetic" / "mclrec.json").exists()

    published = tmp_path / "models" / "published" / "pub-sasrec" / "best.pt"
    published.parent.mkdir(parents=True)
    published.write_bytes((trained / "best.pt").read_bytes())
    declared = yaml.safe_load((ROOT / "params.yaml").read_text())
    declared["checkpoints"] = {"pub-sasrec": {"dataset": "synthetic", "format": "mclrec", "filename": "best.pt",
                                              "url": "https://example.org/best.pt",
                                              "sha256": hashlib.sha256(published.read_bytes()).hexdigest()}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(declared))
    res = runner.invoke(app, ["evaluate", "--params", str(tmp_path / "params.yaml"), "-d", "synthetic", "--device",
                              "cpu", "--published", "pub-sasrec", "--data-dir", str(tiny_dir)])
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "results" / "synthetic" / "pub-sasrec.json").read_text())
    assert record["published"]["name"] == "pub-sasrec" and "settings_beyond_params" not in record
