"""`mclrec recommend`: top-k from full histories, seen items excluded on request, ids in and out as original ids."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from mclrec.checkpoint import load_checkpoint
from mclrec.cli import app
from mclrec.models.parts import build_parts
from mclrec.recommend import Catalogue, full_histories, recommend_users
from mclrec.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def model(tiny, run_cfg_module, tmp_path_factory):
    run = tmp_path_factory.mktemp("rec") / "run"
    train(run_cfg_module, tiny, run, progress=False)
    ckpt = load_checkpoint(run / "best.pt")
    encoder = build_parts(ckpt["config"], ckpt["n_items"]).encoder
    encoder.load_state_dict(ckpt["modules"]["encoder"])
    return run, encoder.eval()


@pytest.fixture(scope="module")
def run_cfg_module(params):
    from mclrec import config

    return config.run_config(params, "synthetic", "sasrec").replace(device="cpu", batch_size=128, max_len=20,
                                                                     max_epochs=1)


def test_full_histories_are_the_whole_sequences(tiny):
    offsets, items = full_histories(tiny)
    train, valid, test = tiny.train, tiny.valid, tiny.test
    for u in range(tiny.n_users):  # test-only loop: the reference concatenation
        expected = list(train.items[train.offsets[u]:train.offsets[u + 1]]) + [train.targets[u], valid.targets[u],
                                                                                  test.targets[u]]
        assert items[offsets[u]:offsets[u + 1]].tolist() == expected


def test_top_k_is_the_best_scored_items_and_excludes_seen_on_request(tiny, tiny_dir, model):
    _, encoder = model
    catalogue = Catalogue.load(tiny_dir)
    users = np.arange(1, 11)
    got = recommend_users(encoder, tiny, catalogue, users, 5, torch.device("cpu"))
    offsets, items = full_histories(tiny)
    with torch.no_grad():
        for u in users:  # reference: score the user's last max_len items directly
            seq = items[offsets[u - 1]:offsets[u]][-tiny.max_len:]
            scores = encoder.full_scores(encoder(torch.as_tensor(seq)[None], torch.tensor([len(seq)])))[0]
            label = catalogue.user_labels[u - 1]
            expected = catalogue.item_labels[scores.topk(5).indices.numpy()].tolist()
            assert got[got["user"] == label]["item"].tolist() == expected
    excluded = recommend_users(encoder, tiny, catalogue, users, 5, torch.device("cpu"), exclude_seen=True)
    for u in users:
        seen = set(catalogue.item_labels[items[offsets[u - 1]:offsets[u]] - 1])
        rows = excluded[excluded["user"] == catalogue.user_labels[u - 1]]
        assert len(rows) == 5 and not seen & set(rows["item"]) and rows["score"].is_monotonic_decreasing
    # k beyond the catalogue: every unseen item, ranked, and none of the seen ones (never recommended, not even last)
    everything = recommend_users(encoder, tiny, catalogue, users[:3], tiny.n_items + 5, torch.device("cpu"),
                                 exclude_seen=True)
    for u in users[:3]:
        seen = set(catalogue.item_labels[items[offsets[u - 1]:offsets[u]] - 1])
        rows = everything[everything["user"] == catalogue.user_labels[u - 1]]
        assert set(rows["item"]) == set(catalogue.item_labels) - seen
        assert rows["rank"].tolist() == list(range(1, len(rows) + 1)) and np.isfinite(rows["score"]).all()


def _cli(run, tiny_dir, *args):
    return runner.invoke(app, ["recommend", "-d", "synthetic", "--checkpoint", str(run / "best.pt"), "--device", "cpu",
                               "--data-dir", str(tiny_dir), "--params", str(ROOT / "params.yaml"), *args])


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_cli_writes_every_output_format(model, tiny_dir, tmp_path, suffix):
    run, _ = model
    out = tmp_path / f"rec{suffix}"
    res = _cli(run, tiny_dir, "--all-users", "--k", "3", "--output", str(out), "--no-progress")
    assert res.exit_code == 0, res.output
    frame = {".csv": pd.read_csv, ".parquet": pd.read_parquet,
             ".jsonl": lambda p: pd.DataFrame([json.loads(x) for x in Path(p).read_text().splitlines()])}[suffix](out)
    assert list(frame.columns) == ["user", "rank", "item", "score"] and len(frame) == 3 * frame["user"].nunique()


def test_cli_users_and_sequences_by_original_id(model, tiny_dir):
    run, _ = model
    catalogue = Catalogue.load(tiny_dir)
    first, second = catalogue.user_labels[:2]
    res = _cli(run, tiny_dir, "--user", first, "--user", second, "--k", "2")
    assert res.exit_code == 0 and res.output.splitlines()[0] == "user,rank,item,score"
    assert [line.split(",")[0] for line in res.output.splitlines()[1:]] == [first, first, second, second]
    res = _cli(run, tiny_dir, "--items", ",".join(catalogue.item_labels[:3]), "--k", "4", "--exclude-seen")
    rows = res.output.splitlines()[1:]
    assert res.exit_code == 0 and len(rows) == 4
    assert not {r.split(",")[2] for r in rows} & set(catalogue.item_labels[:3])


@pytest.mark.parametrize("args,message", [
    (["--user", "nobody", "--user", "x"], "unknown user id(s): nobody, x"),
    (["--user", "[red]nobody"], "unknown user id(s): [red]nobody"),  # printed as written, not as rich markup
    (["--items", "no-such-item"], "unknown item id(s): no-such-item"),
    (["--items", " , "], "the item sequence is empty"),
    ([], "exactly one of them"),
    (["--all-users", "--output", "out.txt"], "must end in .csv, .jsonl or .parquet"),
    (["--all-users", "-m", "mclrec"], "a 'sasrec' run, not mclrec; leave -m out or give -m sasrec"),
    (["--all-users", "--published", "published-mclrec"], "--published names the checkpoint: give it without"),
])
def test_cli_bad_requests_are_clear_errors(model, tiny_dir, args, message):
    run, _ = model
    res = _cli(run, tiny_dir, *args)
    assert res.exit_code == 1 and message in " ".join(res.output.split())


def test_cli_users_file_errors_name_the_file_and_line(model, tiny_dir, tmp_path):
    run, _ = model
    known = Catalogue.load(tiny_dir).user_labels[0]
    users = tmp_path / "users.txt"
    users.write_text(f"{known}\n\n  nobody  \n{known}\n")
    res = _cli(run, tiny_dir, "--users-file", str(users))
    assert res.exit_code == 1 and f"unknown user id(s): {users}:3: nobody (not in" in " ".join(res.output.split())
    users.write_text(f"{known}\n\n{known}\n", encoding="utf-8-sig")  # a BOM, as Windows editors write
    res = _cli(run, tiny_dir, "--users-file", str(users), "--k", "1")
    assert res.exit_code == 0 and [line.split(",")[0] for line in res.output.splitlines()[1:]] == [known, known]
    users.write_text("\n  \n")
    res = _cli(run, tiny_dir, "--users-file", str(users))
    assert res.exit_code == 1 and f"{users}: no user ids" in " ".join(res.output.split())
    res = _cli(run, tiny_dir, "--users-file", str(tmp_path / "missing.txt"))
    assert res.exit_code == 1 and "missing.txt: cannot read the users file" in " ".join(res.output.split())
    users.write_bytes(b"\xff\xfe\x00bad")
    res = _cli(run, tiny_dir, "--users-file", str(users))
    assert res.exit_code == 1 and "cannot read the users file" in " ".join(res.output.split())


def test_cli_seed_names_the_run_and_threads_set_torchs(model, tiny_dir, tmp_path, monkeypatch):
    """--variant with --seed reads models/<d>/<v>/seed<seed>/best.pt; --threads sets torch's thread count."""
    run, _ = model
    monkeypatch.chdir(tmp_path)
    seeded = tmp_path / "models" / "synthetic" / "sasrec" / "seed7"
    seeded.mkdir(parents=True)
    (seeded / "best.pt").write_bytes((run / "best.pt").read_bytes())
    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    args = ["recommend", "-d", "synthetic", "-m", "sasrec", "--device", "cpu", "--data-dir", str(tiny_dir),
            "--params", str(ROOT / "params.yaml"), "--items", Catalogue.load(tiny_dir).item_labels[0]]
    res = runner.invoke(app, args + ["--seed", "7", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert threads == [1] and len(res.output.strip().splitlines()) == 11  # header + k rows
    res = runner.invoke(app, args + ["--seed", "8"])
    assert res.exit_code == 1 and "seed8" in res.output


def test_cli_stdout_holds_only_the_csv_and_a_variant_must_exist(model, tiny_dir, monkeypatch):
    from rich.console import Console

    import mclrec.cli

    run, _ = model
    res = _cli(run, tiny_dir, "--all-users", "--k", "1")  # the progress bar is on: it draws on stderr
    assert res.exit_code == 0 and res.stdout.splitlines()[0] == "user,rank,item,score"
    monkeypatch.setattr(mclrec.cli, "err_console", Console(stderr=True, force_terminal=True))  # as in a terminal
    res = _cli(run, tiny_dir, "--all-users", "--k", "1")  # rich must not route stdout through the bar's console
    assert res.exit_code == 0 and res.stdout.splitlines()[0] == "user,rank,item,score"
    assert len(res.stdout.splitlines()) == Catalogue.load(tiny_dir).user_labels.size + 1
    res = runner.invoke(app, ["recommend", "-d", "synthetic", "-m", "nosuch", "--all-users", "--data-dir",
                              str(tiny_dir), "--params", str(ROOT / "params.yaml")])
    assert res.exit_code == 1 and "variants.nosuch: no such variant" in " ".join(res.output.split())


def test_cli_skip_unknown_leaves_out_and_lists_the_users_it_does_not_know(model, tiny_dir, tmp_path):
    run, _ = model
    known = Catalogue.load(tiny_dir).user_labels[:2]
    users = tmp_path / "users.txt"
    users.write_text(f"user_id\n{known[0]}\nnewcomer\n{known[1]}\n")  # a header line and a new user
    res = _cli(run, tiny_dir, "--users-file", str(users), "--k", "1", "--skip-unknown")
    assert res.exit_code == 0, res.output
    assert f"skipped 2 unknown user id(s): {users}:1: user_id, {users}:3: newcomer" in " ".join(res.stderr.split())
    assert [line.split(",")[0] for line in res.stdout.splitlines()[1:]] == list(known)
    res = _cli(run, tiny_dir, "--user", "nobody", "--skip-unknown")
    assert res.exit_code == 1 and "none of the users is in the processed dataset" in res.output
    res = _cli(run, tiny_dir, "--all-users", "--skip-unknown")
    assert res.exit_code == 1 and "--skip-unknown applies to users named by" in " ".join(res.output.split())


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet", "stdout"])
def test_chunked_output_equals_one_chunk(model, tiny_dir, tmp_path, monkeypatch, suffix):
    """--all-users writes chunk by chunk: the same file whether the users come in one chunk or in many."""
    import mclrec.recommend as recommend

    run, _ = model

    def written(name):
        out = tmp_path / f"{name}{'.csv' if suffix == 'stdout' else suffix}"
        args = ["--all-users", "--k", "3", "--exclude-seen", "--no-progress"]
        res = _cli(run, tiny_dir, *args, *([] if suffix == "stdout" else ["--output", str(out)]))
        assert res.exit_code == 0, res.output
        if suffix == "stdout":
            out.write_text(res.stdout)
        if suffix != ".parquet":
            text = out.read_text()
            assert text.endswith("\n") and "\n\n" not in text and text.count("user,rank") <= 1  # no blank line
        read = {".parquet": pd.read_parquet, ".jsonl": lambda p: pd.read_json(p, lines=True, dtype={"user": str,
                                                                                                    "item": str})}
        return read.get(suffix, lambda p: pd.read_csv(p, dtype={"user": str, "item": str}))(out)

    whole = written("one")
    monkeypatch.setattr(recommend, "CHUNK_ROWS", 7)
    chunked = written("many")
    assert len(whole) > 3 * 7 and list(whole.columns) == ["user", "rank", "item", "score"]
    # a user's scores may differ in the last float32 digit with the other users of its chunk (docs/models.md)
    pd.testing.assert_frame_equal(whole, chunked, check_exact=False, rtol=1e-5)


def test_parquet_chunks_share_one_schema_even_when_one_is_empty(tmp_path):
    from mclrec.recommend import write_recommendations

    empty = pd.DataFrame({"user": pd.Series([], dtype=object), "rank": pd.Series([], dtype="int64"),
                          "item": pd.Series([], dtype=object), "score": pd.Series([], dtype="float32")})
    full = pd.DataFrame({"user": ["u1", "u1"], "rank": [1, 2], "item": ["a", "b"],
                         "score": np.array([0.5, 0.25], dtype=np.float32)})
    out = tmp_path / "recs.parquet"
    assert write_recommendations(iter([empty, full, full]), out) == {"rows": 4, "users": 1}  # u1 named twice
    back = pd.read_parquet(out)
    assert back["item"].tolist() == ["a", "b", "a", "b"] and str(back["score"].dtype) == "float32"
