"""Reliability: checkpoint fallback, full disks, inconsistent inputs, kills and concurrency under Snakemake."""

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from typer.testing import CliRunner

from mclrec import config
from mclrec.cli import app
from mclrec.data.processed import load_processed
from mclrec.evaluation.evaluate import evaluate_checkpoint
from mclrec.io import WriteError, sha256_file, write_json
from mclrec import checkpoint
from mclrec.checkpoint import CheckpointError, load_checkpoint
from mclrec.training.trainer import train

from .conftest import ROOT, rot
from .test_end_to_end import _project_copy

runner = CliRunner()
RUN_FILES = {"best.pt", "last.pt", "log.jsonl", "summary.json", "curves.json"}


@pytest.fixture(autouse=True, scope="module")
def _keep_torch_threads():
    """Runs below use num_threads=1 (fast on a busy 2-core machine); give the rest of the session its setting back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _log(run_dir: Path) -> list[dict]:
    """The reproducible part of log.jsonl (timings dropped)."""
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return [{k: r[k] for k in ("epoch", "loss", "valid")} for r in map(json.loads, lines)]


def _epochs(run_dir: Path) -> tuple[int, int]:
    """Epochs of last.pt and last.prev.pt."""
    return load_checkpoint(run_dir / "last.pt")["epoch"], load_checkpoint(run_dir / "last.prev.pt")["epoch"]


def _cfg(run_cfg, **overrides) -> dict:
    return run_cfg("sasrec", batch_size=128, num_threads=1, **overrides)


@pytest.fixture(scope="module")
def straight(tiny, params, tmp_path_factory) -> Path:
    """An uninterrupted 3-epoch sasrec run on the tiny data (the reference for the resumed runs)."""
    cfg = config.resolve_run(params, "synthetic", "sasrec")
    cfg.update(device="cpu", batch_size=128, eval_batch_size=256, max_len=20, max_epochs=3, num_threads=1)
    run_dir = tmp_path_factory.mktemp("straight")
    train(cfg, tiny, run_dir, progress=False)
    return run_dir


@pytest.mark.parametrize("damage", ["truncated", "overwritten", "rotten", "missing"])
def test_bad_last_checkpoint_falls_back_to_the_previous_epoch(tiny, run_cfg, straight, tmp_path, capsys, damage):
    train(_cfg(run_cfg, max_epochs=2), tiny, tmp_path, progress=False)
    assert _epochs(tmp_path) == (2, 1)
    last = tmp_path / "last.pt"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    elif damage == "overwritten":  # no zip archive: torch reads it as its legacy format and fails with a KeyError
        last.write_bytes(b"hello\n")
    elif damage == "rotten":  # torch.load would read other weights; the records' CRC-32 shows the damage
        rot(last)
    else:
        last.unlink()
    capsys.readouterr()
    summary = train(_cfg(run_cfg, max_epochs=3), tiny, tmp_path, resume="must", progress=False)
    warning = capsys.readouterr().err
    assert f"warning: {last}:" in warning and f"previous epoch's checkpoint {tmp_path / 'last.prev.pt'}" in warning
    assert _log(tmp_path) == _log(straight) and summary["epochs_run"] == 3
    assert _epochs(tmp_path) == (3, 2)


def test_both_checkpoints_unusable_is_an_error_naming_both(tiny, run_cfg, tmp_path):
    train(_cfg(run_cfg, max_epochs=2), tiny, tmp_path, progress=False)
    for name in ("last.pt", "last.prev.pt"):
        (tmp_path / name).write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(CheckpointError, match=r"neither .*last\.pt nor .*last\.prev\.pt is usable"):
        train(_cfg(run_cfg, max_epochs=3), tiny, tmp_path, resume="if-compatible", progress=False)


def test_fresh_start_never_falls_back_into_the_old_run(tiny, run_cfg, tmp_path):
    train(_cfg(run_cfg, max_epochs=2), tiny, tmp_path, progress=False)
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"left by a kill")
    train(_cfg(run_cfg, max_epochs=1, seed=5), tiny, tmp_path, progress=False)
    assert not (tmp_path / "last.prev.pt").exists() and not (tmp_path / ".last.pt.abc123.tmp").exists()
    assert load_checkpoint(tmp_path / "last.pt")["config"]["seed"] == 5


def test_a_fresh_run_removes_the_old_summary_with_its_first_checkpoints(tiny, run_cfg, tmp_path, monkeypatch):
    from mclrec.training import trainer

    train(_cfg(run_cfg, max_epochs=1), tiny, tmp_path, progress=False)
    assert (tmp_path / "summary.json").is_file()

    def killed(*args, **kwargs):
        raise RuntimeError("killed after the first epoch's checkpoints")

    monkeypatch.setattr(trainer, "_write_log", killed)
    with pytest.raises(RuntimeError, match="killed"):
        train(_cfg(run_cfg, max_epochs=2, seed=5), tiny, tmp_path, progress=False)
    assert load_checkpoint(tmp_path / "best.pt")["config"]["seed"] == 5
    assert not (tmp_path / "summary.json").exists()  # the old run's, which would describe the new best.pt


def _fingerprint(run_dir: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(run_dir.iterdir())}


class _HalfThenFull:
    """A binary file that takes half of the first write, then fails as on a full disk."""

    def __init__(self, path, mode="wb"):
        self.fh = open(path, mode)

    def write(self, data) -> int:
        self.fh.write(bytes(data[: len(data) // 2]))
        self.fh.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()


def _serialiser_fails(obj, f, *args, **kwargs):
    f.write(b"PK\x03\x04" + b"\0" * 500)
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("failing", ["file write", "torch.save"])
def test_disk_full_while_saving_names_the_file_and_keeps_the_previous_checkpoints(tiny, run_cfg, tmp_path, monkeypatch,
                                                                                  failing):
    train(_cfg(run_cfg, max_epochs=2), tiny, tmp_path, progress=False)
    before = _fingerprint(tmp_path)
    if failing == "torch.save":
        monkeypatch.setattr(torch, "save", _serialiser_fails)
    else:
        monkeypatch.setattr(checkpoint, "open", _HalfThenFull, raising=False)
    with pytest.raises(WriteError, match=r"\[Errno 28\] .*(best|last)\.pt: cannot write \(No space left on device\)"):
        train(_cfg(run_cfg, max_epochs=3), tiny, tmp_path, resume="must", progress=False)
    monkeypatch.undo()
    assert _fingerprint(tmp_path) == before  # no temp file left, nothing replaced
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2 and load_checkpoint(tmp_path / "best.pt")


@pytest.fixture
def params_file(tmp_path) -> Path:
    """The project's params.yaml for the tiny data (max_len 20)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"]["synthetic"]["preprocess"]["max_len"] = 20
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _limit_file_size(limit: int):
    """preexec_fn: files may not grow beyond `limit` bytes; writes past it fail with EFBIG instead of a signal."""
    import resource

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_file_size_limit_during_a_checkpoint_write_is_a_one_line_cli_error(tiny, tiny_dir, params_file, tmp_path):
    cfg = config.resolve_run(config.load_params(params_file), "synthetic", "sasrec",
                             {"batch_size": 128, "num_threads": 1, "device": "cpu", "max_epochs": 1})
    run_dir = tmp_path / "run"
    train(cfg, tiny, run_dir, progress=False)
    before = _fingerprint(run_dir)
    cmd = [sys.executable, "-m", "mclrec", "train", "-d", "synthetic", "-m", "sasrec", "--params", str(params_file),
           "--data-dir", str(tiny_dir), "--out", str(run_dir), "--device", "cpu", "--max-epochs", "2", "--no-progress",
           "--set", "batch_size=128", "--set", "num_threads=1", "--resume"]
    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=_limit_file_size(50_000), timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("error:") == 1
    assert "[Errno 27]" in proc.stderr and "cannot write (File too large)" in proc.stderr
    assert any(f"{run_dir / name}: cannot write" in " ".join(proc.stderr.split()) for name in ("best.pt", "last.pt"))
    assert _fingerprint(run_dir) == before
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 1


def _rewrite_parquet(path: Path, edit) -> None:
    pq.write_table(edit(pq.read_table(path)), path)


def _bump_first_target(table: pa.Table) -> pa.Table:
    targets = table.column("target").to_pylist()
    targets[0] = targets[0] % 140 + 1
    return table.set_column(table.schema.get_field_index("target"), "target", pa.array(targets, pa.int32()))


def _item_beyond_n_items(table: pa.Table) -> pa.Table:
    inputs = table.column("input").to_pylist()
    inputs[3][0] = 10_000
    return table.set_column(table.schema.get_field_index("input"), "input", pa.array(inputs, pa.list_(pa.int32())))


def _stats_n_items_plus_one(directory: Path) -> None:
    stats = json.loads((directory / "stats.json").read_text())
    stats["n_items"] += 1
    (directory / "stats.json").write_text(json.dumps(stats))


BAD_DATA = {
    "stats.json n_items edited": (_stats_n_items_plus_one, "items.parquet: 143 rows but stats.json n_items=144"),
    "items.parquet row dropped": (lambda d: _rewrite_parquet(d / "items.parquet", lambda t: t.slice(1)),
                                  "items.parquet: 142 rows but stats.json n_items=143"),
    "items.parquet ids shuffled": (lambda d: _rewrite_parquet(d / "items.parquet", lambda t: t.take(
        pa.array([1, 0, *range(2, t.num_rows)]))), "items.parquet: column 'item' is not exactly 1..143"),
    "train item id > n_items": (lambda d: _rewrite_parquet(d / "train.parquet", _item_beyond_n_items),
                                "train.parquet: input item ids outside 1..143"),
    "train target edited": (lambda d: _rewrite_parquet(d / "train.parquet", _bump_first_target),
                            "valid.parquet: input of user 1 does not end with its train.parquet target"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_train_and_evaluate_refuse_inconsistent_processed_data(tiny_dir, params_file, tmp_path, case):
    damage, expected = BAD_DATA[case]
    data_dir = shutil.copytree(tiny_dir, tmp_path / "processed")
    damage(data_dir)
    common = ["-d", "synthetic", "--params", str(params_file), "--data-dir", str(data_dir)]
    train_args = ["train", *common, "-m", "sasrec", "--out", str(tmp_path / "run"), "--no-progress"]
    evaluate_args = ["evaluate", *common, "--checkpoint", str(tmp_path / "x.pt"), "--output", str(tmp_path / "r.json")]
    for args in (train_args, evaluate_args):
        res = runner.invoke(app, args)
        assert res.exit_code == 1 and "Traceback" not in res.output
        assert expected in " ".join(res.output.split()), res.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "r.json").exists()


def test_params_with_a_wrong_type_via_the_cli(tmp_path, tiny_dir):
    params = (ROOT / "params.yaml").read_text().replace("  batch_size: 256", "  batch_size: \"256\"", 1)
    path = tmp_path / "params.yaml"
    path.write_text(params)
    res = runner.invoke(app, ["train", "-d", "synthetic", "-m", "sasrec", "--params", str(path),
                              "--data-dir", str(tiny_dir), "--no-progress"])
    assert res.exit_code == 1
    assert f"{path}:" in res.output and "train.batch_size: '256' is not of type 'integer'" in res.output


def test_deterministic_flag_trains_the_same_on_cpu(tiny_dir, params_file, tmp_path, monkeypatch, straight):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # a user's own setting is kept
    try:
        res = runner.invoke(app, ["train", "-d", "synthetic", "-m", "sasrec", "--params", str(params_file),
                                  "--data-dir", str(tiny_dir), "--out", str(tmp_path), "--device", "cpu",
                                  "--max-epochs", "1", "--set", "batch_size=128", "--threads", "1", "--no-progress", "--deterministic"])
        assert res.exit_code == 0, res.output
        assert torch.are_deterministic_algorithms_enabled() and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    finally:
        torch.use_deterministic_algorithms(False)
    assert _log(tmp_path) == _log(straight)[:1]


# Snakemake: a kill of the whole process tree, the re-run, concurrent jobs and the lock.


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A CI-sized project copy (with profiles/default) whose synthetic data is already preprocessed."""
    work = _project_copy(tmp_path_factory.mktemp("reliability"))
    shutil.copytree(ROOT / "profiles", work / "profiles")
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["datasets"]["synthetic"]["overrides"]["sasrec"].update(max_epochs=2, num_threads=1)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _snakemake(work, "data/processed/synthetic/stats.json", check=True)
    return work


def _snakemake(work: Path, *args: str, check: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run(["snakemake", "--cores", "2", *args], cwd=work, capture_output=True, text=True, timeout=300)
    assert not check or proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _start_snakemake(work: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(["snakemake", "--cores", "2", *args], cwd=work, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_for(proc: subprocess.Popen, condition, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _reference(work: Path, variant: str, out: Path) -> tuple[dict, Path]:
    """The same run done directly (no Snakemake, no kill): its metrics and run folder."""
    cfg = config.resolve_run(config.load_params(work / "params.yaml"), "synthetic", variant)
    data = load_processed(work / "data/processed/synthetic")
    train(cfg, data, out, progress=False)
    ks = tuple(config.load_params(work / "params.yaml")["evaluate"]["ks"])
    result, _, _ = evaluate_checkpoint(data, out / "best.pt", "mclrec", "auto", 2048, ks)
    return result["metrics"], out


@pytest.mark.slow
def test_snakemake_killed_mid_training_then_rerun_gives_the_uninterrupted_result(prepared, tmp_path):
    work = shutil.copytree(prepared, tmp_path / "project")
    run_dir, target = work / "models/synthetic/sasrec/seed0", "results/synthetic/sasrec.json"
    proc = _start_snakemake(work, target)
    _wait_for(proc, (run_dir / "last.pt").exists)
    os.killpg(proc.pid, signal.SIGKILL)  # pre-emption: Snakemake and the training die at once
    proc.wait()
    first_epoch = load_checkpoint(run_dir / "last.pt")["state"]["log"][0]
    assert first_epoch["epoch"] == 1
    locked = _snakemake(work, target)
    assert locked.returncode != 0 and "LockException" in locked.stdout + locked.stderr
    _snakemake(work, "--unlock", check=True)
    _snakemake(work, target, check=True)
    result = json.loads((work / target).read_text())
    metrics, ref_dir = _reference(work, "sasrec", tmp_path / "reference")
    assert result["metrics"] == metrics
    assert result["best_epoch"] == json.loads((ref_dir / "summary.json").read_text())["best_epoch"]
    assert _log(run_dir) == _log(ref_dir) and result["epochs_run"] == 2
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert log[0]["epoch_seconds"] == first_epoch["epoch_seconds"]  # epoch 1 came from last.pt, not a new run
    best, ref_best = load_checkpoint(run_dir / "best.pt")["modules"], load_checkpoint(ref_dir / "best.pt")["modules"]
    assert all(torch.equal(best["encoder"][k], ref_best["encoder"][k]) for k in ref_best["encoder"])


@pytest.mark.slow
def test_snakemake_parallel_trainings_stay_apart_and_a_second_invocation_is_locked_out(prepared, tmp_path):
    work = shutil.copytree(prepared, tmp_path / "project")
    params = yaml.safe_load((work / "params.yaml").read_text())
    for variant in ("sasrec", "sasrec-bpr"):
        params["variants"][variant]["max_epochs"] = 1
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    targets = ["results/synthetic/sasrec.json", "results/synthetic/sasrec-bpr.json"]
    proc = _start_snakemake(work, *targets, "--set-threads", "train=1")
    _wait_for(proc, lambda: any((work / "models/synthetic" / Path(t).stem / "seed0").is_dir() for t in targets))
    second = _snakemake(work, targets[0])
    output, _ = proc.communicate(timeout=300)
    assert second.returncode != 0 and "LockException" in second.stdout + second.stderr
    assert proc.returncode == 0, output[-3000:]
    second_start = output.index("rule train:", output.index("rule train:") + 1)
    assert output.count("rule train:") == 2 and second_start < output.index("Finished jobid")  # ran side by side
    for target in targets:
        variant = Path(target).stem
        result = json.loads((work / target).read_text())
        assert (result["variant"], result["checkpoint"]) == (variant, f"models/synthetic/{variant}/seed0/best.pt")
        run_dir = work / "models/synthetic" / variant / "seed0"
        assert {p.name for p in run_dir.iterdir()} == RUN_FILES
        for name in ("best.pt", "last.pt"):
            assert load_checkpoint(run_dir / name)["config"]["variant"] == variant
        assert (work / f"logs/train/synthetic/{variant}/seed0.log").is_file()


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_outputs_get_the_mode_of_a_plain_open(tmp_path, mask):
    """Atomic writes go through mkstemp (0600); the output keeps the mode the umask gives a plain open instead."""
    previous = os.umask(mask)
    try:
        write_json(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o666 & ~mask


def test_a_results_json_and_its_side_files_are_replaced_together(tmp_path, monkeypatch):
    from mclrec.evaluation import evaluate as evaluation

    out = tmp_path / "sasrec.json"
    old = {out: "old results\n", tmp_path / "sasrec.metrics.json": "old metrics\n", tmp_path / "sasrec.ranks.npy": "x"}
    for path, text in old.items():
        path.write_text(text)
    record = {"metrics": {"test": {"HR@10": 0.5}, "valid": {"HR@10": 0.4}}, "variant": "sasrec"}

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(evaluation.np, "save", full_disk)  # the last of the three files fails
    with pytest.raises(WriteError, match=r"sasrec\.ranks\.npy: cannot write"):
        evaluation.write_results(out, record, np.arange(3))
    assert {path: path.read_text() for path in old} == old and sorted(tmp_path.iterdir()) == sorted(old)
    monkeypatch.undo()
    synced = []

    def sync_fails_second(fd):  # where delayed allocation reports a full disk: after the first file is synced
        synced.append(fd)
        if len(synced) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", sync_fails_second)
    with pytest.raises(WriteError, match=r"sasrec\.metrics\.json: cannot write"):
        evaluation.write_results(out, record, np.arange(3))
    assert {path: path.read_text() for path in old} == old and sorted(tmp_path.iterdir()) == sorted(old)
    monkeypatch.undo()
    evaluation.write_results(out, record, np.arange(3))
    assert json.loads(out.read_text()) == record and sorted(tmp_path.iterdir()) == sorted(old)
    assert json.loads((tmp_path / "sasrec.metrics.json").read_text()) == record["metrics"]
    assert np.load(tmp_path / "sasrec.ranks.npy").tolist() == [0, 1, 2]


def test_the_crc_check_passes_torch_files_written_without_crcs(tmp_path):
    torch.serialization.set_crc32_options(False)
    try:
        torch.save({"w": torch.arange(1000.0)}, tmp_path / "nocrc.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    torch.save({"w": torch.arange(1000.0)}, tmp_path / "crc.pt")
    assert checkpoint.damaged_record(tmp_path / "nocrc.pt") is None
    assert checkpoint.damaged_record(tmp_path / "crc.pt") is None
    rot(tmp_path / "crc.pt")
    assert checkpoint.damaged_record(tmp_path / "crc.pt") is not None
    (tmp_path / "legacy.pt").write_bytes(b"\x80\x02not a zip archive")
    assert checkpoint.damaged_record(tmp_path / "legacy.pt") is None


SIGTERM_BETWEEN_RENAMES = """
import os, signal, sys
from pathlib import Path
import torch
from mclrec import io
from mclrec.cli_common import exit_on_sigterm

torch.set_num_threads(2)
torch.ones(256, 256) @ torch.ones(256, 256)  # torch's worker threads exist: a process-wide signal may go to one
exit_on_sigterm()
folder = Path(sys.argv[1])
replace = os.replace
renamed = []

def replace_then_term(src, dst):
    replace(src, dst)
    renamed.append(dst)
    if len(renamed) == 1:
        os.kill(os.getpid(), signal.SIGTERM)

os.replace = replace_then_term
with io.atomic_paths(folder / "r.json", folder / "r.metrics.json", folder / "r.ranks.npy") as temps:
    for tmp in temps:
        tmp.write_text("new")
print("not reached: the deferred SIGTERM ends the process after the renames")
"""


def test_sigterm_between_the_renames_of_files_that_belong_together_waits_for_the_last(tmp_path):
    for name in ("r.json", "r.metrics.json", "r.ranks.npy"):
        (tmp_path / name).write_text("old")
    done = subprocess.run([sys.executable, "-c", SIGTERM_BETWEEN_RENAMES, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 128 + signal.SIGTERM and "not reached" not in done.stdout, done.stderr
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {n: "new" for n in ("r.json", "r.metrics.json",
                                                                                       "r.ranks.npy")}
