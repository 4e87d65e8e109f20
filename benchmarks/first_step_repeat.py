"""Same seed, same numbers? The first training steps repeated in fresh processes, with and without the VML warm-up.

Usage: python benchmarks/first_step_repeat.py [--dataset synthetic] [--variant mclrec] [--processes 40]
                                              [--threads 2] [--steps 1] [--arms resolved unresolved]

Each process trains `--steps` batches from the run's seed, as `mclrec train` does on the CPU (glibc heap settings,
huge pages, the thread count), and prints a digest of every parameter afterwards. Processes of one arm that agree
computed the same numbers bit for bit. Arm `resolved` settles MKL's vector-math kernels first, as the `mclrec`
commands do (mclrec/vector_math.py); arm `unresolved` leaves the first multi-threaded exp/log/sqrt to pick its
kernel, where oneMKL 2024.2 can run one thread's chunk on its low-accuracy kernel (pytorch/pytorch#188792). The
processes of the two arms alternate, so load on a shared machine hits both alike. The race needs two or more
threads and shows in a minority of processes (1 in 8 to 40 on a 2-core Intel VM); a machine, MKL or PyTorch
without it shows one digest in both arms.

The table gives, per arm: processes, distinct digests, processes outside the most common digest, and whether the
arms' most common digests are equal (they are, when the warm-up changes no number of a normal process).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ARMS = ("resolved", "unresolved")
ROOT = Path(__file__).resolve().parents[1]


def child(dataset: str, variant: str, threads: int, steps: int, arm: str, data_dir: str | None) -> str:
    """One fresh process's digest of the parameters after `steps` training steps, then its heap settings."""
    from mclrec.cpu_heap import heap_state, huge_pages_state, keep_freed_memory, use_huge_pages

    use_huge_pages()  # before the first tensor, as the `mclrec` commands do
    import torch

    from bench_train import VariantRun
    from mclrec.config import load_params, run_config
    from mclrec.data.processed import load_processed
    from mclrec.paths import processed_dir
    from mclrec.vector_math import resolve_vector_math

    keep_freed_memory()
    if arm == "resolved":
        resolve_vector_math()
    torch.set_num_threads(threads)
    cfg = run_config(load_params(ROOT / "params.yaml"), dataset, variant, {"device": "cpu"})
    run = VariantRun(cfg, load_processed(data_dir or processed_dir(dataset)), torch.device("cpu"))
    for _ in range(steps):
        run.step()
    digest = hashlib.sha256()
    for name, module in run.parts.modules().items():
        for key, value in module.state_dict().items():
            digest.update(f"{name}.{key}".encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return f"{digest.hexdigest()[:12]}\t{heap_state()}\t{huge_pages_state()}"


def positive(text: str) -> int:
    """argparse type: an integer of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer of at least 1")
    return int(text)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--variant", default="mclrec")
    parser.add_argument("--data-dir", help="processed folder (default data/processed/<dataset>)")
    parser.add_argument("--processes", type=positive, default=40, help="fresh processes per arm")
    parser.add_argument("--threads", type=positive, default=2)
    parser.add_argument("--steps", type=positive, default=1)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(child(args.dataset, args.variant, args.threads, args.steps, args.child, args.data_dir))
        return {}
    base = [sys.executable, __file__, "--dataset", args.dataset, "--variant", args.variant, "--threads",
            str(args.threads), "--steps", str(args.steps)] + (["--data-dir", args.data_dir] if args.data_dir else [])
    digests: dict[str, list[str]] = {arm: [] for arm in args.arms}
    heaps = set()
    for i in range(args.processes):
        for arm in args.arms:
            out = subprocess.run(base + ["--child", arm], capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"{arm} process {i + 1} failed:\n{out.stderr}")
            digest, heap, huge_pages = out.stdout.splitlines()[-1].split("\t")
            digests[arm].append(digest)
            heaps.add(f"heap {heap}, huge pages {huge_pages}")
    from bench_train import machine

    import torch

    summary = {}
    header = machine(torch.device("cpu"))
    header.pop("cpu_heap"), header.pop("cpu_huge_pages"), header.pop("torch_threads")  # this process's, not theirs
    for key, value in header.items():
        print(f"- {key}: {value}")
    print(f"- the processes' CPU heap: {'; '.join(sorted(heaps))}")
    print(f"- MKL: {mkl_version(torch)}")
    print(f"- {args.dataset} {args.variant}, {args.steps} step(s) at {args.threads} thread(s) per process\n")
    print("| arm | processes | distinct digests | outside the most common | most common digest |")
    print("|---|---|---|---|---|")
    for arm, found in digests.items():
        counts = collections.Counter(found)
        common, n = counts.most_common(1)[0]
        summary[arm] = {"processes": len(found), "distinct": len(counts), "outliers": len(found) - n, "common": common}
        print(f"| {arm} | {len(found)} | {len(counts)} | {len(found) - n} | {common} |")
    if len(summary) == 2:
        same = summary["resolved"]["common"] == summary["unresolved"]["common"]
        print(f"\nmost common digests {'equal' if same else 'DIFFER'} between the arms")
    return summary


def mkl_version(torch) -> str:
    """The MKL line of PyTorch's build configuration (the race's versions: oneMKL 2024.2)."""
    for line in torch.__config__.show().splitlines():
        if "Math Kernel Library" in line:
            return line.strip(" -")
    return "none"


if __name__ == "__main__":
    main()
