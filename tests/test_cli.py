"""The CLI as a user runs it: clear one-line errors, exit status 1, nothing half-written."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mclrec.cli import app

from .conftest import ROOT

runner = CliRunner()


def _params(tmp_path, **datasets) -> str:
    """A params.yaml with the project's train/variants and the given datasets."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"] = datasets
    del params["study"], params["checkpoints"]  # both name the benchmark datasets replaced here
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return str(path)


def _seqtxt(filename="toy.txt", **source):
    return {"source": source or {"manual": "ask"}, "filename": filename, "format": "seqtxt",
            "preprocess": {"user_k": 3, "item_k": 1, "max_len": 10}}


def test_preprocess_malformed_file_names_the_line_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = _params(tmp_path, toy=_seqtxt())
    raw = tmp_path / "data/raw/toy/toy.txt"
    raw.parent.mkdir(parents=True)
    raw.write_text("1 1 2 3\n2 2 3 x4\n")
    res = runner.invoke(app, ["preprocess", "toy", "--params", params])
    assert res.exit_code == 1
    assert "toy.txt, line 2: id 'x4' is not a positive integer" in res.output
    assert not (tmp_path / "data/processed/toy").exists()


def test_preprocess_empty_after_kcore_keeps_the_previous_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = _params(tmp_path, toy=_seqtxt())
    raw = tmp_path / "data/raw/toy/toy.txt"
    raw.parent.mkdir(parents=True)
    raw.write_text("1 1 2 3 4\n2 2 3 4 1\n")
    assert runner.invoke(app, ["preprocess", "toy", "--params", params]).exit_code == 0
    before = (tmp_path / "data/processed/toy/train.parquet").read_bytes()
    res = runner.invoke(app, ["preprocess", "toy", "--params", params, "--user-k", "9"])
    assert res.exit_code == 1 and "toy.txt" in res.output
    assert (tmp_path / "data/processed/toy/train.parquet").read_bytes() == before


def test_preprocess_without_raw_file_says_to_download(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["preprocess", "toy", "--params", _params(tmp_path, toy=_seqtxt())])
    assert res.exit_code == 1 and "mclrec download toy" in res.output


def test_preprocess_refuses_a_raw_file_that_is_not_the_declared_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "data/raw/toy/toy.txt"
    raw.parent.mkdir(parents=True)
    raw.write_text("1 1 2 3 4\n2 2 3 4 1\n")
    good = hashlib.sha256(raw.read_bytes()).hexdigest()
    for declared, code in (("0" * 64, 1), (good, 0)):
        params = _params(tmp_path, toy=_seqtxt(url="file:///elsewhere/toy.txt", sha256=declared))
        res = runner.invoke(app, ["preprocess", "toy", "--params", params])
        assert res.exit_code == code, res.output
        said = " ".join(res.output.split())
        refused = f"sha256 is {good} but" in said and f"datasets.toy.source.sha256 is {'0' * 64}" in said
        assert refused == (code == 1)
        assert (tmp_path / "data/processed/toy").exists() == (code == 0)
    # an explicit --raw file is the user's choice: no declared checksum applies
    params = _params(tmp_path, toy=_seqtxt(url="file:///elsewhere/toy.txt", sha256="0" * 64))
    assert runner.invoke(app, ["preprocess", "toy", "--params", params, "--raw", str(raw)]).exit_code == 0


def test_preprocess_of_a_missing_raw_path_names_the_option_not_download(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["preprocess", "toy", "--params", _params(tmp_path, toy=_seqtxt()),
                              "--raw", str(tmp_path / "nonexist.txt")])
    assert res.exit_code == 1 and "nonexist.txt: raw file not found; check the --raw path" in res.output
    assert "mclrec download" not in res.output


@pytest.mark.parametrize("header,order", [("user_id:token\titem_id:token\tts:float", "file order"),
                                          ("user_id:token\titem_id:token\ttimestamp:float", "timestamp")])
def test_preprocess_of_an_inter_file_says_and_records_what_orders_it(tmp_path, monkeypatch, header, order):
    monkeypatch.chdir(tmp_path)
    entry = {**_seqtxt("toy.inter"), "format": "recbole-inter"}
    raw = tmp_path / "data/raw/toy/toy.inter"
    raw.parent.mkdir(parents=True)
    rows = [f"u{u}\ti{(u + k) % 5}\t{100 - k}" for u in range(4) for k in range(4)]
    raw.write_text(header + "\n" + "\n".join(rows) + "\n")
    res = runner.invoke(app, ["preprocess", "toy", "--params", _params(tmp_path, toy=entry)])
    assert res.exit_code == 0, res.output
    stats = json.loads((tmp_path / "data/processed/toy/stats.json").read_text())
    assert stats["time_order"] == order
    assert ("the header has no timestamp field" in " ".join(res.output.split())) == (order == "file order")


@pytest.mark.parametrize("separator,users,items", [(",", 0, 0), (", ", 0, 5), (" , ", 4, 5)])
def test_preprocess_reports_ids_with_spaces_around_them(tmp_path, monkeypatch, separator, users, items):
    monkeypatch.chdir(tmp_path)
    entry = {**_seqtxt("toy.csv"), "format": "amazon-ratings-csv"}
    raw = tmp_path / "data/raw/toy/toy.csv"
    raw.parent.mkdir(parents=True)
    rows = [separator.join([f"u{u}", f"i{(u + k) % 5}", "5.0", str(100 + k)]) for u in range(4) for k in range(4)]
    raw.write_text("\n".join(rows) + "\n")
    res = runner.invoke(app, ["preprocess", "toy", "--params", _params(tmp_path, toy=entry)])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert (f"{users} user and {items} item ids start or end with whitespace" in said) == bool(users or items)
    assert ("whitespace" in said) == bool(users or items)


def test_download_manual_source_explains_where_to_get_and_put_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MCLREC_MIRROR", raising=False)
    readme = (ROOT / "docs" / "data.md").read_text()
    block = readme.split("  yelp-2022:\n", 1)[1].split("```", 1)[0]
    entry = yaml.safe_load("yelp-2022:\n" + block)["yelp-2022"]
    res = runner.invoke(app, ["download", "yelp-2022", "--params", _params(tmp_path, **{"yelp-2022": entry})])
    assert res.exit_code == 1
    assert "yelp.com/dataset" in res.output and "data/raw/yelp-2022/yelp_academic_dataset_review.json" in res.output


def test_download_from_mirror_verifies_checksum(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "toy.txt").write_text("1 1 2 3\n")
    good = hashlib.sha256(b"1 1 2 3\n").hexdigest()
    url = "http://127.0.0.1:9/toy.txt"
    params = _params(tmp_path, ok=_seqtxt(url=url, sha256=good), bad=_seqtxt(url=url, sha256="0" * 64))
    res = runner.invoke(app, ["download", "bad", "--params", params], env={"MCLREC_MIRROR": str(mirror)})
    assert res.exit_code == 1 and "sha256" in res.output
    message = "".join(res.output.split())
    assert "datasets.bad.source.sha256);nothingwaswrittentodata/raw/bad/toy.txt" in message
    assert "Ifthefileistherightone,correctthatsetting." in message
    assert not (tmp_path / "data/raw/bad/toy.txt").exists()
    res = runner.invoke(app, ["download", "ok", "--params", params], env={"MCLREC_MIRROR": str(mirror)})
    assert res.exit_code == 0, res.output
    assert (tmp_path / "data/raw/ok/toy.txt").read_text() == "1 1 2 3\n"
    (tmp_path / "data/raw/ok/toy.txt").unlink()
    res = runner.invoke(app, ["download", "ok", "--params", params], env={"MCLREC_MIRROR": str(tmp_path / "mirrr")})
    said = " ".join(res.output.split())
    assert res.exit_code == 1 and "mirrr: the mirror folder (MCLREC_MIRROR) does not exist" in said
    assert not any((tmp_path / "data/raw/ok").iterdir())


def test_unknown_dataset_and_bad_override(tmp_path):
    params = str(ROOT / "params.yaml")
    res = runner.invoke(app, ["download", "movielens", "--params", params])
    assert res.exit_code == 1 and "no such dataset; defined: synthetic, beauty, sports, yelp" in res.output
    res = runner.invoke(app, ["show-config", "beauty", "mclrec", "--params", params, "--set", "bta=1"])
    assert res.exit_code == 1 and "did you mean 'beta'" in res.output


def test_synth_seed_override(tmp_path):
    params = str(ROOT / "params.yaml")
    a, b, c = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"
    for path, seed in ((a, "1"), (b, "1"), (c, "2")):
        assert runner.invoke(app, ["synth", "--params", params, "--seed", seed, "--out", str(path)]).exit_code == 0
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


def test_train_refuses_data_processed_with_another_max_len(tiny_dir):
    res = runner.invoke(app, ["train", "-d", "synthetic", "-m", "sasrec", "--params", str(ROOT / "params.yaml"),
                              "--data-dir", str(tiny_dir), "--no-progress"])
    assert res.exit_code == 1 and "max_len=20" in res.output


def test_version_is_the_package_version():
    from importlib.metadata import version

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"mclrec {version('mclrec')}"


@pytest.mark.parametrize("text,value", [("1e-4", 1e-4), ("1E3", 1000.0), (".5", 0.5), ("5e+2", 500.0), ("2.5E-3", 2.5e-3)])
def test_set_reads_numbers_as_users_write_them(text, value):
    from mclrec.config import parse_overrides

    assert parse_overrides([f"lr={text}"]) == {"lr": value}


def test_set_still_rejects_non_numbers():
    from mclrec.config import ConfigError, parse_overrides

    with pytest.raises(ConfigError, match="--set: lr: '1e-4x' is not of type 'number'"):
        parse_overrides(["lr=1e-4x"])


def test_params_file_reads_exponent_numbers(tmp_path):
    from mclrec.config import load_params

    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text().replace("lr: 0.001", "lr: 1e-3"))
    assert load_params(tmp_path / "params.yaml")["train"]["lr"] == 1e-3


def test_checkpoint_format_choices_are_enforced():
    res = runner.invoke(app, ["evaluate", "--dataset", "synthetic", "--checkpoint", "x.pt", "--checkpoint-format", "keras"])
    assert res.exit_code == 2 and "mclrec" in res.output and "recbole" in res.output


def test_citation_file_carries_the_package_version():
    import mclrec

    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["version"] == mclrec.__version__ and cff["license"] == "MIT"


def test_lock_file_pins_every_declared_dependency():
    import re
    import tomllib

    def name(requirement: str) -> str:
        return re.split(r"[<>=!\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {name(r) for r in project["dependencies"]}
    declared |= {name(r) for extra in project["optional-dependencies"].values() for r in extra if not r.startswith("mclrec")}
    pinned = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            package, _, version = line.partition("==")
            pinned[package.lower().replace("_", "-")] = version
    assert declared <= set(pinned), sorted(declared - set(pinned))
    assert all(pinned.values())  # exact versions only


@pytest.mark.parametrize("command", [["train", "-d", "synthetic", "-m", "sasrec"],
                                     ["evaluate", "-d", "synthetic", "-m", "sasrec"],
                                     ["recommend", "-d", "synthetic", "-m", "sasrec", "--user", "1"]])
def test_an_unknown_device_is_a_one_line_error(command, tmp_path, monkeypatch):
    """Refused before any data or checkpoint is read (none exists here), as `--set device=bogus` is."""
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, command + ["--device", "bogus", "--params", str(ROOT / "params.yaml")])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert "device 'bogus': expected auto, cpu, cuda, cuda:N or mps" in res.output


def test_heads_that_do_not_divide_the_hidden_size_are_a_settings_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["train", "-d", "synthetic", "-m", "sasrec", "--set", "n_heads=3",
                              "--params", str(ROOT / "params.yaml")])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert "run synthetic/sasrec: hidden_size 64 is not a multiple of n_heads 3" in " ".join(res.output.split())


@pytest.mark.parametrize("ratio", ["1.5", "-0.1"])
def test_a_noise_ratio_outside_0_1_is_refused(ratio, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["evaluate", "-d", "synthetic", "-m", "sasrec", "--noise", ratio,
                              "--params", str(ROOT / "params.yaml")])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert f"--noise {float(ratio)}: a noise ratio is in (0, 1]" in " ".join(res.output.split())


@pytest.mark.parametrize("command", [["evaluate", "-d", "synthetic", "-m", "sasrec"],
                                     ["recommend", "-d", "synthetic", "-m", "sasrec", "--user", "1"]])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("mine\n")
    (tmp_path / "adir.csv").mkdir()
    base = command + ["--params", str(ROOT / "params.yaml"), "--output"]
    res = runner.invoke(app, base + [str(tmp_path / "afile" / "r.csv")])
    assert res.exit_code == 1 and f"{tmp_path / 'afile'} is a file, not a folder" in "".join(res.output.split("\n"))
    res = runner.invoke(app, base + [str(tmp_path / "adir.csv")])
    assert res.exit_code == 1 and "is a folder; give a file path" in " ".join(res.output.split())
    assert (tmp_path / "afile").read_text() == "mine\n" and not any((tmp_path / "adir.csv").iterdir())


def test_evaluate_output_must_be_a_json_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["evaluate", "-d", "synthetic", "-m", "sasrec", "--params", str(ROOT / "params.yaml"),
                              "--output", str(tmp_path / "r.txt")])
    assert res.exit_code == 1 and "--output must end in .json" in " ".join(res.output.split())


TERMINATED_WRITE = """
import os, signal, sys
from pathlib import Path
from mclrec.cli_common import exit_on_sigterm
from mclrec.io import atomic_open
exit_on_sigterm()
with atomic_open(Path(sys.argv[1]), "w") as fh:
    fh.write("half of the new")
    os.kill(os.getpid(), signal.SIGTERM)
    fh.write(" and the rest")
"""


def test_sigterm_ends_a_write_as_ctrl_c_does(tmp_path):
    out = tmp_path / "recommendations.csv"
    out.write_text("the previous output\n")
    done = subprocess.run([sys.executable, "-c", TERMINATED_WRITE, str(out)], capture_output=True, text=True)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert out.read_text() == "the previous output\n" and sorted(tmp_path.iterdir()) == [out]  # no temp file left


def test_the_mclrec_command_exits_through_its_clean_ups_on_sigterm(tmp_path):
    """`python -m mclrec` (the `mclrec` script's entry) blocked on opening a FIFO as its users file: SIGTERM ends it
    with status 143 (by the signal, -15, without the handler)."""
    fifo = tmp_path / "users.fifo"
    os.mkfifo(fifo)
    command = [sys.executable, "-m", "mclrec", "recommend", "-d", "synthetic", "-m", "sasrec", "--users-file",
               str(fifo), "--params", str(ROOT / "params.yaml")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not _catches(proc.pid, signal.SIGTERM) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # until the handler is in place (then the command blocks opening the FIFO)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # never left blocked on the FIFO
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err


def _catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler for `signum` (Linux: SigCgt in /proc/<pid>/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught >> (signum - 1) & 1)
