"""Host syncs per training batch on CUDA, counted by torch itself (torch.cuda.set_sync_debug_mode).

Usage: python benchmarks/count_syncs.py --dataset beauty [--variants sasrec mclrec] [--batches 10] [--set KEY=VALUE]

Each variant's settings resolve from params.yaml as `mclrec train` resolves them (on CUDA: no length buckets, no
packed tokens, sdpa attention, the sync-free feed and step); after two warm-up batches, `--batches` loop bodies of
the training epoch (batch construction, step, loss sums) run with the sync debug mode set to warn, and every
warning is one operation that waited for the GPU. The target is 0 per batch (the epoch's two reads, of the
deferred non-finite checks and of the loss sums, happen after the loop). `--device cpu` rehearses the script on a
CPU: the same loop (the sync-free feed and step) runs, and the count is n/a, as syncs are a CUDA matter there
(tests/test_sync_free_step.py counts the step's host reads on the CPU instead).
"""

from __future__ import annotations

import argparse
import collections
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import VariantRun  # noqa: E402

from mclrec.config import load_params, parse_overrides, run_config  # noqa: E402
from mclrec.data.processed import load_processed  # noqa: E402
from mclrec.paths import processed_dir  # noqa: E402
from mclrec.run_config import AUTO, AUTO_SETTINGS  # noqa: E402
from mclrec.training.trainer import FiniteChecks, LossSums, train_step  # noqa: E402


def count(run: VariantRun, batches: int) -> collections.Counter:
    """Sync warnings per source line over `batches` loop bodies of the epoch, after two warm-up batches."""
    checks, sums = FiniteChecks(deferred=True), LossSums()
    for number in range(2):
        checks.batch = number
        sums.add(train_step(run.cfg, run.parts, run.optimisers, run.next_batch(), run.generator, checks))
    cuda = run.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    seen: collections.Counter = collections.Counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            for number in range(batches):
                checks.batch = number + 2
                sums.add(train_step(run.cfg, run.parts, run.optimisers, run.next_batch(), run.generator, checks))
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
    checks.raise_if_any()
    for warning in caught:
        if "synchroniz" in str(warning.message):
            seen[f"{Path(warning.filename).name}:{warning.lineno}"] += 1
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="beauty")
    parser.add_argument("--variants", nargs="+", default=["sasrec", "cl4srec", "duorec", "mclrec"])
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("count_syncs: no CUDA device (rehearse with --device cpu)")
        return 1
    params = load_params(args.params)
    data = load_processed(processed_dir(args.dataset))
    device = torch.device(args.device)
    print("| variant | syncs per batch | where |\n|---|---|---|")
    for variant in args.variants:
        # the CUDA settings and step even in a CPU rehearsal: what `auto` means on CUDA, the sync-free feed
        cfg = run_config(params, args.dataset, variant, {**parse_overrides(args.sets), "device": args.device})
        if args.device == "cpu":
            cfg = cfg.replace(**{key: resolve(AUTO, "cuda") for key, resolve in AUTO_SETTINGS.items()})
        run = VariantRun(cfg, data, device, sync_free_step=True)
        seen = count(run, args.batches)
        where = ", ".join(f"{line} x{n}" for line, n in seen.most_common(5)) or "-"
        per_batch = f"{sum(seen.values()) / args.batches:.1f}" if device.type == "cuda" else "n/a (CPU)"
        print(f"| {variant} | {per_batch} | {where} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
