"""benchmarks/bench_train.py runs end to end on a tiny processed dataset and prints a row per variant."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest
import torch

from mclrec.cpu_heap import huge_pages_offered
from mclrec.data.preprocess import preprocess
from mclrec.data.synth import generate_synthetic

from .conftest import ROOT, load_benchmark

VARIANTS = ("sasrec", "cl4srec", "duorec", "mclrec", "mclrec-paper", "mclrec-j")


@pytest.fixture(scope="module")
def tiny_processed(tmp_path_factory) -> Path:
    """200 users x 150 items, preprocessed like the synthetic dataset (5-core, max_len 50)."""
    tmp = tmp_path_factory.mktemp("bench")
    raw = tmp / "tiny.txt"
    generate_synthetic(raw, seed=3, n_users=200, n_items=150, n_clusters=10, mean_length=9, min_length=5,
                       stay_probability=0.8)
    out = tmp / "processed"
    preprocess(raw, "seqtxt", 5, 5, 50, out, extra_stats={"dataset": "synthetic"})
    return out


@pytest.mark.parametrize("naive", [False, True])
def test_bench_train_smoke(tiny_processed, tmp_path, capsys, naive):
    bench = load_benchmark("bench_train")
    argv = ["--dataset", "synthetic", "--data-dir", str(tiny_processed), "--params", str(ROOT / "params.yaml"),
            "--batches", "1", "--warmup", "1", "--flop-batches", "1", "--batch-size", "32", "--threads", "1",
            "--device", "cpu", "--matmul-size", "128", "--json", str(tmp_path / "bench.json"), "--eval-repeats", "2",
            "--score-blocks", "1000", "--also", "dropout_draws=uniform"] + (["--naive"] if naive else [])
    threads = torch.get_num_threads()
    try:  # one thread: fast, and immune to OpenMP spin-waiting when other processes load the CPUs
        result = bench.main(argv)
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.strip().splitlines()
    for variant in VARIANTS:
        assert sum(line.startswith(f"| {variant} |") for line in lines) == 1, variant
        assert sum(line.startswith(f"| {variant} [dropout_draws=uniform] |") for line in lines) == 1, variant
        assert f"{variant}: epoch time / epoch time with [dropout_draws=uniform] = " in "\n".join(lines)
    assert sum(line.startswith("mclrec/sasrec epoch ratio: ") for line in lines) == 1
    assert lines[-3].startswith("eval seconds (")
    assert lines[-2].startswith("eval seconds with CPU_SCORE_BLOCK=2097152: ")  # the default, then the others
    assert lines[-1].startswith("eval seconds with CPU_SCORE_BLOCK=1000: ")
    assert not any("target" in line for line in lines)
    assert any(line.startswith("- cpu_flags: ") for line in lines)

    saved = json.loads((tmp_path / "bench.json").read_text())
    assert [r["variant"] for r in saved["variants"]] == [*VARIANTS, *(f"{v} [dropout_draws=uniform]" for v in VARIANTS)]
    assert {tuple(r["length_buckets"]) for r in saved["variants"]} == ({()} if naive else {(8, 16, 32)})
    for row in saved["variants"]:
        assert row["batch_s"] > 0 and row["epoch_s"] == pytest.approx(row["batch_s"] * row["batches_per_epoch"])
        assert row["share_of_peak"] == pytest.approx(row["gflops"] / saved["header"]["fp32_matmul_gflops"], rel=0.01)
        in_run = float(saved["header"]["fp32_matmul_gflops_in_run"].split()[0])
        assert row["share_of_in_run_rate"] == pytest.approx(row["gflops"] / in_run, rel=0.01)
    assert saved["summary"]["mclrec_sasrec_epoch_ratio"] == pytest.approx(
        result["variants"][3]["epoch_s"] / result["variants"][0]["epoch_s"])
    assert saved["eval"]["users"] > 0 and saved["eval"]["seconds"] > 0 and len(saved["eval"]["each"]) == 2
    # each step split into its L_rec evaluations (timed apart) and the rest
    rec = saved["summary"]["rec_loss"]
    assert rec["gflop"] == pytest.approx(3 * 2 * 32 * 64 * (saved["eval"]["items"] + 1) / 1e9)
    calls = {row["variant"]: row["rec_calls"] for row in saved["variants"]}
    assert [calls[v] for v in VARIANTS] == [1, 1, 1, 2, 1, 1]  # the meta schedule evaluates L0 twice per batch
    for row in saved["variants"]:
        assert row["rest_gflop"] == pytest.approx(row["gflop_per_batch"] - row["rec_calls"] * rec["gflop"])
        assert row["rec_gflop_share"] == pytest.approx(row["rec_calls"] * rec["gflop"] / row["gflop_per_batch"])
    assert sum(line.startswith("| mclrec (rest) | 2 | ") for line in lines) == 1
    assert set(saved["eval"]["score_blocks"]) == {"2097152", "1000"}


def test_flops_are_counted_on_the_real_step(tiny_processed):
    """SASRec's counted FLOPs: the full-softmax logits alone are 2 B H (N + 1) forward, x3 with backward."""
    from mclrec.config import load_params, run_config
    from mclrec.data.processed import load_processed

    bench = load_benchmark("bench_train")
    data = load_processed(tiny_processed)
    cfg = run_config(load_params(ROOT / "params.yaml"), "synthetic", "sasrec", {"batch_size": 16, "device": "cpu"})
    sasrec = bench.VariantRun(cfg, data, torch.device("cpu")).flops(1)
    logits = 3 * 2 * 16 * 64 * (data.n_items + 1)
    assert sasrec > logits  # plus the encoder's matrix products
    mclrec_cfg = run_config(load_params(ROOT / "params.yaml"), "synthetic", "mclrec", {"batch_size": 16, "device": "cpu"})
    mclrec = bench.VariantRun(mclrec_cfg, data, torch.device("cpu"))
    assert mclrec.flops(1) > 3 * sasrec  # two encoder updates over input + two views, plus the augmenter step


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_bench_heap_smoke(tiny_processed, tmp_path, capsys):
    bench = load_benchmark("bench_heap")
    offered = huge_pages_offered()
    arms = list(bench.ARMS) if offered else ["glibc defaults", "kept"]
    result = bench.main(["--dataset", "synthetic", "--data-dir", str(tiny_processed),
                         "--params", str(ROOT / "params.yaml"), "--variants", "sasrec", "--rounds", "1", "--steps", "2",
                         "--threads", "1", "--arms", *arms, "--json", str(tmp_path / "heap.json")])
    assert [row["arm"] for row in result["rows"]] == arms
    assert [run["heap"] for run in result["runs"]] == ["glibc defaults", "kept", "kept"][:len(arms)]
    huge = ["off", "off", "on"] if offered else ["not offered"] * 2
    assert [run["huge_pages"] for run in result["runs"]] == huge
    assert all(row["step_ms"] > 0 and row["faults_per_step"] >= 0 and row["peak_rss_mib"] > 0
               for row in result["rows"])
    assert "| sasrec | glibc defaults |" in capsys.readouterr().out
    assert json.loads((tmp_path / "heap.json").read_text())["rows"] == result["rows"]


def test_bench_heap_refuses_the_huge_page_arm_where_the_kernel_offers_none(tiny_processed, monkeypatch):
    bench = load_benchmark("bench_heap")
    monkeypatch.setattr(bench, "huge_pages_offered", lambda: False)
    with pytest.raises(SystemExit, match="offers no transparent huge pages .*leave out the arm 'kept, huge pages'"):
        bench.main(["--dataset", "synthetic", "--data-dir", str(tiny_processed), "--params", str(ROOT / "params.yaml"),
                    "--variants", "sasrec", "--rounds", "1", "--steps", "1"])


def test_bench_processes_smoke(tiny_processed, tmp_path, capsys):
    bench = load_benchmark("bench_processes")
    arms = ["nproc=1 num_threads=1", "nproc=2 num_threads=1"]
    result = bench.main(["--dataset", "synthetic", "--data-dir", str(tiny_processed),
                         "--params", str(ROOT / "params.yaml"), "--variants", "sasrec", "--epochs", "2",
                         "--set", "batch_size=32", "--arm", arms[0], "--arm", arms[1],
                         "--json", str(tmp_path / "processes.json")])
    assert [row["arm"] for row in result["rows"]] == arms
    assert [len(run["epoch_seconds"]) for run in result["runs"]] == [2, 2]  # both epochs of each real training
    first, split = result["rows"]
    assert first["speed_up"] == 1
    assert split["speed_up"] == pytest.approx(first["epoch_seconds"] / split["epoch_seconds"])
    out = capsys.readouterr().out
    assert "| sasrec | nproc=2 num_threads=1 |" in out and "- cpu_flags: " in out
    assert json.loads((tmp_path / "processes.json").read_text())["rows"] == result["rows"]


def test_bench_processes_refuses_an_arm_that_is_not_settings(capsys):
    bench = load_benchmark("bench_processes")
    with pytest.raises(SystemExit):
        bench.main(["--arm", "nproc 2"])
    assert "--arm 'nproc 2': expected space-separated KEY=VALUE settings" in capsys.readouterr().err


def test_bench_processes_names_the_training_that_failed(tiny_processed, tmp_path):
    bench = load_benchmark("bench_processes")
    with pytest.raises(SystemExit, match=r"no-such-variant \[nproc=1 num_threads=1\] failed"):
        bench.main(["--dataset", "synthetic", "--data-dir", str(tiny_processed), "--params", str(ROOT / "params.yaml"),
                    "--variants", "no-such-variant", "--arm", "nproc=1 num_threads=1"])


def _one_sasrec_batch(tiny_processed: Path, *extra: str) -> dict:
    """bench_train.main on one timed SASRec batch of the tiny dataset, one thread, no evaluation."""
    bench = load_benchmark("bench_train")
    argv = ["--dataset", "synthetic", "--data-dir", str(tiny_processed), "--params", str(ROOT / "params.yaml"),
            "--batches", "1", "--warmup", "0", "--flop-batches", "1", "--batch-size", "32", "--threads", "1",
            "--device", "cpu", "--matmul-size", "128", "--variants", "sasrec", "--no-eval", *extra]
    threads = torch.get_num_threads()
    try:
        return bench.main(argv)
    finally:
        torch.set_num_threads(threads)

def test_bench_train_reports_the_bf16_rate(tiny_processed, tmp_path, capsys):
    """A `precision: bf16` row is also measured against the machine's bfloat16 product rate; fp32 rows are not."""
    result = _one_sasrec_batch(tiny_processed, "--compare", "precision=bf16")
    out = capsys.readouterr().out
    bf16_rate = result["header"]["bf16_matmul_gflops"]
    assert bf16_rate > 0 and f"- bf16_matmul_gflops: {bf16_rate}" in out
    assert result["header"]["bf16_matmul_size"] == 128  # never above --matmul-size
    fp32_row, bf16_row = result["variants"]
    assert (fp32_row["precision"], bf16_row["precision"]) == ("fp32", "bf16")
    assert fp32_row["share_of_bf16_peak"] is None
    # the encoder's products run in bfloat16, L_rec's in float32; the floor takes each at its own rate
    assert fp32_row["gflop_bf16_per_batch"] == 0
    assert 0 < bf16_row["gflop_bf16_per_batch"] < bf16_row["gflop_per_batch"]
    assert bf16_row["gflop_per_batch"] == pytest.approx(fp32_row["gflop_per_batch"], rel=0.05)
    fp32_rate = result["header"]["fp32_matmul_gflops"]
    floor = (bf16_row["gflop_bf16_per_batch"] / bf16_rate
             + (bf16_row["gflop_per_batch"] - bf16_row["gflop_bf16_per_batch"]) / fp32_rate)
    assert bf16_row["share_of_bf16_peak"] == pytest.approx(floor / bf16_row["batch_s"], rel=0.05)  # rates rounded
    assert bf16_row["floor_epoch_s"] == pytest.approx(floor * bf16_row["batches_per_epoch"], rel=0.05)
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("| variant | s/batch"))
    cells = header.split("|")[1:-1]
    column = [c.strip() for c in cells].index("share of bf16 peak")
    fp32_cells = next(line for line in lines if line.startswith("| sasrec |")).split("|")[1:-1]
    bf16_cells = next(line for line in lines if line.startswith("| sasrec [precision=bf16] |")).split("|")[1:-1]
    assert len(fp32_cells) == len(bf16_cells) == len(cells)
    assert fp32_cells[column].strip() == "-" and bf16_cells[column].strip().endswith("%")


def test_bench_train_without_bf16_has_no_bf16_column(tiny_processed, capsys):
    result = _one_sasrec_batch(tiny_processed)
    assert "bf16_matmul_gflops" not in result["header"]
    assert "share of bf16 peak" not in capsys.readouterr().out


@pytest.mark.parametrize(("gflops", "size"), [(1000.0, 2048), (20.0, 1024), (1.0, 512), (0.01, 256)])
def test_the_bf16_rate_is_measured_at_an_affordable_size(monkeypatch, gflops, size):
    """Slow bfloat16 products (no AVX512-BF16 or AMX) are timed at a size that takes about half a second."""
    bench = load_benchmark("bench_train")
    monkeypatch.setattr(bench, "matmul_gflops", lambda *args, **kwargs: gflops)
    assert bench.affordable_size(torch.device("cpu"), torch.bfloat16, 2048) == size


def test_flops_are_counted_by_the_products_dtype():
    """autocast's bfloat16 products count as bfloat16, the others as float32; the total is FlopCounterMode's."""
    bench = load_benchmark("bench_train")
    a, b = torch.randn(8, 4), torch.randn(4, 3)
    product = 2 * 8 * 4 * 3
    with bench.FlopsByDtype() as counter:
        a @ b
        with torch.autocast("cpu", dtype=torch.bfloat16):
            a @ b
            torch.nn.functional.linear(a, b.T)
    assert counter.by_dtype == {torch.float32: product, torch.bfloat16: 2 * product}
    assert counter.get_total_flops() == 3 * product
