"""Training speed of the working tree against modules as they were at a git revision, in one process.

Usage: python benchmarks/bench_revision.py --rev REV [--module mclrec.models.packed_encoding ...] [--dataset beauty]
                                            [--variants sasrec mclrec] [--batches 30] [--threads N] [--set KEY=VALUE]

A code change that is not a setting (bench_train's --compare needs one) is measured here the way bench_train
compares settings: the module's source at REV (`git show REV:src/<module>.py`) is loaded beside today's as a
separate module, and every variant is trained twice from the same seed, once with the functions of REV's module
and once with today's, the steps taken round-robin so that load on a shared machine hits both arms alike. While
REV's arm steps, every reference in the `mclrec` package to one of today's functions of the module that REV's
module also defines is pointed at REV's (the module's own attributes included); REV's module imports the rest of
the package as it is today, so REV must be one whose module still fits today's interfaces. Both arms start from
the same weights and batches, so their first step's losses must agree to float rounding: the report prints the
largest relative difference as a check that the two compute the same step. Several modules (`--module a b`) are
swapped together: a session's changes to several files, measured as one.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import VariantRun, machine, sync  # noqa: E402

from mclrec.config import load_params, parse_overrides, run_config  # noqa: E402
from mclrec.cpu_heap import keep_freed_memory, use_huge_pages  # noqa: E402
from mclrec.data.processed import load_processed  # noqa: E402
from mclrec.paths import processed_dir  # noqa: E402
from mclrec.vector_math import resolve_vector_math  # noqa: E402
from mclrec.training.trainer import train_step  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def module_at(rev: str, module: str, repo: Path = ROOT) -> ModuleType:
    """`module` (a dotted name under src/) as its source was at git revision `rev`, loaded as `<module>@rev`."""
    path = f"src/{module.replace('.', '/')}.py"
    shown = subprocess.run(["git", "-C", str(repo), "show", f"{rev}:{path}"], capture_output=True, text=True)
    if shown.returncode != 0:
        raise SystemExit(f"git show {rev}:{path} failed: {shown.stderr.strip()}")
    name = f"{module}@{rev}"
    spec = importlib.util.spec_from_loader(name, loader=None)
    old = importlib.util.module_from_spec(spec)
    old.__file__ = f"{rev}:{path}"
    sys.modules[name] = old  # dataclasses look their module up while the source runs
    try:
        exec(compile(shown.stdout, old.__file__, "exec"), old.__dict__)
    except Exception as error:
        raise SystemExit(f"{old.__file__} does not load against today's package: {error!r}") from error
    return old


def swaps(new: ModuleType, old: ModuleType) -> list[tuple[ModuleType, str, Any, Any]]:
    """(module, name, today's function, REV's) for every reference in the mclrec package to a function defined in
    `new` that `old` also defines."""
    functions = {name: obj for name, obj in vars(new).items() if inspect.isfunction(obj)
                 and obj.__module__ == new.__name__ and inspect.isfunction(vars(old).get(name))}
    found = []
    package = [m for name, m in sorted(sys.modules.items())
               if (name == "mclrec" or name.startswith("mclrec.")) and m is not old]
    for module in package:
        for attr, value in list(vars(module).items()):
            for name, function in functions.items():
                if value is function:
                    found.append((module, attr, function, vars(old)[name]))
    return found


def revision_patches(rev: str, modules: list[str]) -> list[tuple[ModuleType, str, Any, Any]]:
    """The swaps of every module in `modules` (REV's against today's). Every REV module is loaded before any
    reference is looked up, so a REV module's references to another listed module's functions (today's, imported
    when it loaded) are swapped too and REV's arm runs REV's code throughout."""
    pairs = [(importlib.import_module(module), module_at(rev, module)) for module in modules]
    patches = []
    for (new, old), module in zip(pairs, modules):
        found = swaps(new, old)
        if not found:
            raise SystemExit(f"no function of {module} that {rev}'s module also defines is referenced")
        patches += found
    return patches


@contextmanager
def arm(patches: list[tuple[ModuleType, str, Any, Any]], use_old: bool) -> Iterator[None]:
    """Point the references at REV's functions (use_old) for the duration; today's otherwise."""
    if use_old:
        for module, attr, _, old in patches:
            setattr(module, attr, old)
    try:
        yield
    finally:
        for module, attr, new, _ in patches:
            setattr(module, attr, new)


def timed_step(run: VariantRun) -> tuple[float, dict[str, float]]:
    """Seconds of one train_step on the run's next batch, and its loss terms."""
    batch = run.next_batch()
    sync(run.device)
    start = time.perf_counter()
    terms = train_step(run.cfg, run.parts, run.optimisers, batch, run.generator)
    sync(run.device)
    return time.perf_counter() - start, {k: float(v) for k, v in terms.items()}


def render(header: dict, rows: list[dict], rev: str, modules: list[str], patched: list[str]) -> str:
    """The Markdown report: machine, one row per variant and arm, the speed-up and the first-step check."""
    lines = [f"- {key}: {value}" for key, value in header.items()]
    lines += [f"- module: {', '.join(modules)}; REV: {rev}; references swapped: {', '.join(patched)}", "",
              "| variant | code | s/batch | batches/epoch | s/epoch | speed-up | first-step loss, largest rel. diff |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['code']} | {r['batch_s']:.4f} | {r['batches_per_epoch']} "
                     f"| {r['epoch_s']:.1f} | {r['speedup']:.3f}x | {r['first_step_rel_diff']:.1e} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", required=True, help="git revision whose module to time against the working tree")
    parser.add_argument("--module", nargs="+", default=["mclrec.models.packed_encoding"],
                        help="dotted module names under src/ (several: swapped together)")
    parser.add_argument("--dataset", default="beauty")
    parser.add_argument("--data-dir", type=Path, help="processed dataset folder (default data/processed/<dataset>)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--variants", nargs="+", default=["sasrec", "mclrec"])
    parser.add_argument("--batches", type=int, default=30, help="timed batches per variant and arm")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches per variant and arm")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: params num_threads, else torch's)")
    parser.add_argument("--batch-size", type=int, help="override the training batch size")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a train setting for every variant (repeatable), as `mclrec train --set`")
    args = parser.parse_args(argv)
    if args.batches < 1 or args.warmup < 1:
        parser.error("--batches and --warmup must be >= 1 (the first warm-up step is the check)")
    args.data_dir = args.data_dir or processed_dir(args.dataset)
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run both arms round-robin, print the report and return its rows."""
    args = parse_args(argv)
    patches = revision_patches(args.rev, args.module)
    overrides = {"device": "cpu", **parse_overrides(args.overrides)}
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    cfgs = {v: run_config(load_params(args.params), args.dataset, v, overrides) for v in args.variants}
    keep_freed_memory()  # as the trainer does
    use_huge_pages()  # as the `mclrec` commands do, before the first tensor
    resolve_vector_math()  # as the trainer does
    first = next(iter(cfgs.values()))
    if args.threads or first.num_threads:
        torch.set_num_threads(args.threads or first.num_threads)
    data = load_processed(args.data_dir)
    device = torch.device("cpu")
    runs = {(v, code): VariantRun(cfg, data, device) for v, cfg in cfgs.items() for code in ("rev", "today")}
    first_terms: dict[tuple[str, str], dict[str, float]] = {}
    for key, run in runs.items():
        torch.manual_seed(run.cfg.seed)  # dropout draws from the default generator: both arms' first steps alike
        for _ in range(args.warmup):
            with arm(patches, use_old=key[1] == "rev"):
                _, terms = timed_step(run)
            first_terms.setdefault(key, terms)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
    for _ in range(args.batches):
        for key, run in runs.items():
            with arm(patches, use_old=key[1] == "rev"):
                times[key].append(timed_step(run)[0])
    rows = []
    for (variant, code), run in runs.items():
        batch_s = statistics.median(times[(variant, code)])
        before, now = first_terms[(variant, "rev")], first_terms[(variant, "today")]
        rel = max(abs(now[k] - before[k]) / max(abs(before[k]), 1e-12) for k in before)
        rows.append({"variant": variant, "code": args.rev if code == "rev" else "working tree", "batch_s": batch_s,
                     "batches_per_epoch": run.feed.batches_per_epoch,
                     "epoch_s": batch_s * run.feed.batches_per_epoch,
                     "speedup": statistics.median(times[(variant, "rev")]) / batch_s, "first_step_rel_diff": rel})
    patched = sorted({f"{module.__name__}.{attr}" for module, attr, _, _ in patches})
    print(render({**machine(device), "dataset": args.dataset, "batches_timed": args.batches}, rows, args.rev,
                 args.module, patched))
    return rows


if __name__ == "__main__":
    main()
