"""benchmarks/bench_revision.py: a module at a git revision loaded beside today's, references swapped per arm."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest
import torch

from .conftest import ROOT, load_benchmark
from .test_bench_train_smoke import tiny_processed  # noqa: F401  (fixture)


def test_module_at_loads_the_revision_source_and_names_a_bad_revision(tmp_path):
    bench = load_benchmark("bench_revision")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    source = tmp_path / "src" / "pkg" / "mod.py"
    source.write_text("def value():\n    return 1\n")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "one"], check=True)
    source.write_text("def value():\n    return 2\n")
    subprocess.run(git + ["commit", "-qam", "two"], check=True)
    assert bench.module_at("HEAD~1", "pkg.mod", tmp_path).value() == 1
    assert bench.module_at("HEAD", "pkg.mod", tmp_path).value() == 2
    with pytest.raises(SystemExit, match="git show nosuchrev:src/pkg/mod.py failed"):
        bench.module_at("nosuchrev", "pkg.mod", tmp_path)


def test_swaps_point_every_reference_at_the_old_function_and_restore_it():
    bench = load_benchmark("bench_revision")
    new, old, user = (types.ModuleType(name) for name in ("mclrec._fake_new", "mclrec._fake_old", "mclrec._fake_user"))
    exec("def f():\n    return 'new'\ndef only_new():\n    return 0\n", new.__dict__)
    exec("def f():\n    return 'old'\n", old.__dict__)
    user.f, user.g = new.f, new.only_new
    sys.modules.update({m.__name__: m for m in (new, old, user)})
    try:
        patches = bench.swaps(new, old)
        assert sorted((m.__name__, attr) for m, attr, _, _ in patches) == [("mclrec._fake_new", "f"),
                                                                          ("mclrec._fake_user", "f")]
        with bench.arm(patches, use_old=True):
            assert user.f() == "old" and new.f() == "old" and user.g is new.only_new
        assert user.f() == "new" and new.f() == "new"
        with bench.arm(patches, use_old=False):
            assert user.f() == "new"
    finally:
        for m in (new, old, user):
            del sys.modules[m.__name__]


def test_bench_revision_smoke(tiny_processed, capsys):  # noqa: F811
    bench = load_benchmark("bench_revision")
    threads = torch.get_num_threads()
    try:
        rows = bench.main(["--rev", "HEAD", "--dataset", "synthetic", "--data-dir", str(tiny_processed),
                           "--params", str(ROOT / "params.yaml"), "--variants", "sasrec", "mclrec", "--batches", "1",
                           "--warmup", "1", "--batch-size", "32", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "mclrec.training.objectives.encode_packed" in out and "cpu_flags" in out
    assert [(r["variant"], r["code"]) for r in rows] == [("sasrec", "HEAD"), ("sasrec", "working tree"),
                                                         ("mclrec", "HEAD"), ("mclrec", "working tree")]
    assert all(r["first_step_rel_diff"] == 0 and r["epoch_s"] > 0 for r in rows)  # the same code: the same step


def test_bench_revision_swaps_several_modules_together(tiny_processed, capsys):  # noqa: F811
    bench = load_benchmark("bench_revision")
    threads = torch.get_num_threads()
    try:
        rows = bench.main(["--rev", "HEAD", "--dataset", "synthetic", "--data-dir", str(tiny_processed),
                           "--params", str(ROOT / "params.yaml"), "--variants", "mclrec", "--batches", "1",
                           "--warmup", "1", "--batch-size", "32", "--threads", "1",
                           "--module", "mclrec.models.packed_encoding", "mclrec.models.dropout"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "module: mclrec.models.packed_encoding, mclrec.models.dropout; REV: HEAD" in out
    assert "mclrec.training.objectives.encode_packed" in out and "mclrec.models.dropout.cpu_keep_mask" in out
    assert all(r["first_step_rel_diff"] == 0 for r in rows)
    with pytest.raises(SystemExit, match="no function of mclrec.errors"):
        bench.main(["--rev", "HEAD", "--dataset", "synthetic", "--data-dir", str(tiny_processed), "--module",
                    "mclrec.models.dropout", "mclrec.errors"])


def test_modules_swapped_together_swap_each_others_references():
    bench = load_benchmark("bench_revision")
    patches = bench.revision_patches("HEAD", ["mclrec.models.fused_losses", "mclrec.models.losses"])
    swapped = {(module.__name__, attr) for module, attr, _, _ in patches}
    # REV's losses module imported today's cross_entropy when it loaded: REV's arm must see REV's
    assert ("mclrec.models.losses@HEAD", "cross_entropy") in swapped
    assert ("mclrec.models.losses", "cross_entropy") in swapped
    assert ("mclrec.training.objectives", "rec_ce_loss") in swapped
