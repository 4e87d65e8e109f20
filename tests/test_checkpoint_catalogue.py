"""A checkpoint is used only with the item catalogue it was trained on: same count is not enough."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mclrec.checkpoint import CheckpointError, check_catalogue, load_checkpoint
from mclrec.data.processed import catalogue_fingerprint, load_processed
from mclrec.evaluation.evaluate import load_encoder
from mclrec.training.errors import TrainingError
from mclrec.training.trainer import train

from .conftest import ROOT


@pytest.fixture(scope="module")
def run(tiny, params, tmp_path_factory) -> Path:
    """A one-epoch sasrec run on the tiny data."""
    from mclrec import config

    cfg = config.resolve_run(params, "synthetic", "sasrec")
    cfg.update(device="cpu", batch_size=128, eval_batch_size=256, max_len=20, max_epochs=1, num_threads=1)
    threads = torch.get_num_threads()
    run_dir = tmp_path_factory.mktemp("catalogue_run")
    train(cfg, tiny, run_dir, progress=False)
    torch.set_num_threads(threads)
    return run_dir


def _copy_with_items(tiny_dir: Path, target: Path, reorder) -> Path:
    """tiny_dir copied to `target` with items.parquet's original ids rearranged by `reorder` (same count)."""
    shutil.copytree(tiny_dir, target)
    table = pq.read_table(target / "items.parquet")
    ids = reorder(table.column("original_id").to_pylist())
    pq.write_table(table.set_column(1, "original_id", pa.array(ids, pa.string())), target / "items.parquet")
    return target


def test_checkpoints_record_the_catalogue_they_were_trained_on(run, tiny, tiny_dir):
    meta = load_checkpoint(run / "best.pt")
    assert meta["catalogue_sha256"] == tiny.catalogue_sha256 == catalogue_fingerprint(tiny_dir / "items.parquet")
    assert load_checkpoint(run / "last.pt")["catalogue_sha256"] == tiny.catalogue_sha256
    load_encoder(run / "best.pt", "mclrec", tiny, torch.device("cpu"))  # its own data: accepted


def test_another_catalogue_of_the_same_size_is_refused(run, tiny_dir, tmp_path):
    other = load_processed(_copy_with_items(tiny_dir, tmp_path / "other", lambda ids: ids[1:] + ids[:1]))
    assert other.n_items == load_checkpoint(run / "best.pt")["n_items"]
    with pytest.raises(CheckpointError, match="trained on the items of another dataset, which are not this dataset's"):
        load_encoder(run / "best.pt", "mclrec", other, torch.device("cpu"))


def test_the_same_catalogue_in_another_folder_is_accepted(run, tiny_dir, tmp_path):
    same = load_processed(_copy_with_items(tiny_dir, tmp_path / "same", lambda ids: ids))
    load_encoder(run / "best.pt", "mclrec", same, torch.device("cpu"))


def test_a_checkpoint_without_a_recorded_catalogue_is_checked_by_count_only(run, tiny_dir, tmp_path):
    other = load_processed(_copy_with_items(tiny_dir, tmp_path / "other", lambda ids: ids[::-1]))
    meta = {k: v for k, v in load_checkpoint(run / "best.pt").items() if k != "catalogue_sha256"}
    check_catalogue(Path("old.pt"), meta, other)  # written before the catalogue was recorded: no way to tell
    with pytest.raises(CheckpointError, match="trained with 1 items"):
        check_catalogue(Path("old.pt"), {**meta, "n_items": 1}, other)
    legacy = load_checkpoint(ROOT / "tests" / "fixtures" / "checkpoint-v0.1" / "best.pt")
    assert "catalogue_sha256" not in legacy


def test_resuming_on_another_catalogue_is_not_a_resume(run, tiny_dir, tmp_path, params, capsys):
    from mclrec import config

    other = load_processed(_copy_with_items(tiny_dir, tmp_path / "other", lambda ids: ids[1:] + ids[:1]))
    run_dir = tmp_path / "run"
    shutil.copytree(run, run_dir)
    cfg = config.resolve_run(params, "synthetic", "sasrec")
    cfg.update(device="cpu", batch_size=128, eval_batch_size=256, max_len=20, max_epochs=2, num_threads=1)
    threads = torch.get_num_threads()
    try:
        with pytest.raises(TrainingError, match="cannot resume: .*which are not this dataset's"):
            train(cfg, other, run_dir, resume="must", progress=False)
        summary = train(cfg, other, run_dir, resume="if-compatible", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert "not resumed, starting afresh: cannot resume" in capsys.readouterr().err
    assert summary["epochs_run"] == 2
    assert load_checkpoint(run_dir / "best.pt")["catalogue_sha256"] == other.catalogue_sha256
