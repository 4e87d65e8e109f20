"""The `mclrec` command line: one command per pipeline stage, all reading params.yaml."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from mclrec import __version__, config, paths
from mclrec.cli_common import ParamsOpt, check_output_file, err_console, exit_on_sigterm, user_errors
from mclrec.cpu_heap import use_huge_pages
from mclrec.device import check_device_name
from mclrec.errors import MclrecError
from mclrec.pipeline import run_of

app = typer.Typer(
    help="MCLRec and baselines: download, preprocess, train, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


class CheckpointFormat(str, Enum):
    """Checkpoint layouts `mclrec evaluate` reads."""

    mclrec = "mclrec"
    recbole = "recbole"


class ItemOrder(str, Enum):
    """How a RecBole file's item-embedding rows are numbered."""

    dataset = "dataset"
    recbole_export = "recbole-export"


ItemOrderOpt = typer.Option(
    None, "--item-order",
    help="Item numbering of a RecBole file's rows: dataset (our item ids; the published checkpoint) or "
         "recbole-export (RecBole's own numbering of `mclrec export recbole`'s files: a SASRec RecBole trained "
         "on them). Default dataset; a file that lists its items (item_id_tokens) is read by that list; a "
         "RecBole 1.x file whose config says benchmark_filename train, valid, test must say.")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"mclrec {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """MCLRec and baselines: download, preprocess, train, evaluate."""
    # before any command makes a tensor: PyTorch's CPU allocator reads this once (mclrec/cpu_heap.py)
    use_huge_pages()


def _add_report_commands() -> None:
    """Attach `mclrec report ...` (imported here so the core commands stay light)."""
    from mclrec.report.commands import report_app

    app.add_typer(report_app, name="report")

@app.command()
def download(
    name: str = typer.Argument(..., metavar="NAME", help="A dataset or a published checkpoint declared in params.yaml."),
    params: Path = ParamsOpt,
    mirror: Optional[Path] = typer.Option(
        None, envvar="MCLREC_MIRROR", help="Folder holding the files under their file names (no network). Env: MCLREC_MIRROR."
    ),
    raw_root: Path = typer.Option(paths.RAW_ROOT, help="Root of raw data folders."),
) -> None:
    """Fetch (or generate) a dataset's raw file into data/raw/<dataset>/ (a length group's: its parent's), or a
    published checkpoint into models/published/<name>/; the sha256 is verified either way."""
    from mclrec.data.download import fetch_raw

    with user_errors():
        params_dict = config.load_params(params)
        if name in params_dict.get("checkpoints", {}):
            spec = params_dict["checkpoints"][name]
            dest = paths.published_checkpoint(name, spec["filename"])
            source = {"url": spec["url"], "sha256": spec["sha256"]}
            declared_in = f"{params}: checkpoints.{name}.sha256"
            dest = fetch_raw(name, source, spec["filename"], dest.parent, mirror, declared_in)
            err_console.print(f"checkpoint ready: {dest}")
            return
        spec = config.dataset_spec(params_dict, name)
        owner = config.raw_source(params_dict, name)  # a length group reads its parent's file
        dest = paths.raw_file(owner, spec["filename"], raw_root)
        if "generator" in spec["source"]:
            _generate(spec, dest)
        else:
            declared_in = f"{params}: datasets.{owner}.source.sha256"
            dest = fetch_raw(owner, spec["source"], spec["filename"], dest.parent, mirror, declared_in)
        shared = f" ({name} reads {owner}'s raw file)" if owner != name else ""
        err_console.print(f"raw file ready: {dest}{shared}")


@app.command()
def synth(
    dataset: str = typer.Argument("synthetic", help="A dataset whose source is a generator."),
    params: Path = ParamsOpt,
    seed: Optional[int] = typer.Option(None, help="Override the generator seed."),
    out: Optional[Path] = typer.Option(None, help="Output file (default data/raw/<dataset>/<filename>, a length "
                                                  "group's parent's)."),
) -> None:
    """Generate a synthetic dataset (seqtxt) from its generator settings."""
    with user_errors():
        params_dict = config.load_params(params)
        spec = config.dataset_spec(params_dict, dataset)
        if "generator" not in spec["source"]:
            raise config.ConfigError(f"params.yaml: datasets.{dataset}.source: not a generator source")
        dest = out or paths.raw_file(config.raw_source(params_dict, dataset), spec["filename"])
        info = _generate(spec, dest, seed)
        err_console.print(f"generated {dest}: {json.dumps(info)}")


def _generate(spec: dict, dest: Path, seed: Optional[int] = None) -> dict:
    """Run the synthetic generator of a dataset spec into `dest`."""
    from mclrec.data.synth import generate_synthetic

    settings = dict(spec["source"]["generator"])
    if seed is not None:
        settings["seed"] = seed
    return generate_synthetic(dest, **settings)


@app.command()
def preprocess(
    dataset: str = typer.Argument(..., help="Dataset name from params.yaml."),
    params: Path = ParamsOpt,
    raw: Optional[Path] = typer.Option(None, help="Raw file (default data/raw/<dataset>/<filename>, a length group's "
                                                  "parent's, checked against the declared sha256; a --raw file is "
                                                  "taken as it is)."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default data/processed/<dataset>)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="Override the raw format."),
    user_k: Optional[int] = typer.Option(None, help="Override k for users."),
    item_k: Optional[int] = typer.Option(None, help="Override k for items."),
    max_len: Optional[int] = typer.Option(None, help="Override the maximum sequence length."),
    engine: Optional[str] = typer.Option(
        None, help="auto (duckdb for raw files of 1 GiB or more), memory or duckdb (out of core, for raw files "
                   "larger than RAM); same outputs. Default: the dataset's preprocess.engine, else auto."),
) -> None:
    """k-core filter, order, remap ids and split leave-one-out into Parquet."""
    from mclrec.data.preprocess import preprocess as run_preprocess
    from mclrec.data.processed import space_padded_ids

    with user_errors():
        params_dict = config.load_params(params)
        spec = config.dataset_spec(params_dict, dataset)
        prep = spec["preprocess"]
        owner = config.raw_source(params_dict, dataset)  # a length group reads its parent's file
        raw_path = raw or paths.raw_file(owner, spec["filename"])
        if not raw_path.is_file():
            hint = "check the --raw path" if raw else f"run `mclrec download {owner}` first"
            raise MclrecError(f"{raw_path}: raw file not found; {hint}")
        stats = run_preprocess(
            raw_path,
            fmt or spec["format"],
            user_k if user_k is not None else prep["user_k"],
            item_k if item_k is not None else prep["item_k"],
            max_len if max_len is not None else prep["max_len"],
            out or paths.processed_dir(dataset),
            extra_stats={"dataset": dataset},
            length_group=prep.get("length_group"),
            engine=engine or prep.get("engine", "auto"),
            expected_sha256=None if raw else spec["source"].get("sha256"),
            declared_in=f"{params}: datasets.{dataset}.source.sha256",
        )
        keys = ("n_users", "n_items", "n_interactions", "avg_length", "sparsity")
        err_console.print(f"{dataset}: " + ", ".join(f"{k}={stats[k]}" for k in keys))
        if stats["format"] == "recbole-inter" and stats["time_order"] == "file order":
            err_console.print(f"{raw_path}: the header has no timestamp field, so each user's interactions are taken "
                              "in file order (stats.json: time_order); name the time column timestamp:float to "
                              "order by it")
        padded = space_padded_ids(out or paths.processed_dir(dataset))
        if any(padded.values()):
            err_console.print(f"{raw_path}: {padded['users']} user and {padded['items']} item ids start or end with "
                              "whitespace and are kept as written (users.parquet / items.parquet: original_id); "
                              "for `u1, i1` write `u1,i1`")


def _use_threads(threads: int | None) -> None:
    """torch's intra-op threads for a scoring command, where --threads was given."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


SetOpt = typer.Option([], "--set", help="Override a run setting: key=value (YAML value); repeatable.")
ScoringThreadsOpt = typer.Option(None, "--threads", min=1, help="CPU threads for torch (default: torch's, one per core).")
RunSeedOpt = typer.Option(None, help="With --variant: the run of this seed (default train.seed).")


@app.command()
def train(
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset name from params.yaml."),
    variant: str = typer.Option(..., "--variant", "--model", "-m", help="Variant name from params.yaml."),
    params: Path = ParamsOpt,
    set_: list[str] = SetOpt,
    seed: Optional[int] = typer.Option(None, help="Override the seed (train.seed)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda, cuda:N."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for torch (overrides num_threads; the "
                                                            "workflows pass the job's threads). With N processes "
                                                            "each takes threads // N."),
    nproc: int | None = typer.Option(
        None, "--nproc", min=1,
        help="Train over N processes (overrides nproc): one training, the batch split over them; gloo on the CPU, "
             "NCCL on CUDA with one GPU each. Under torchrun the processes are torchrun's."),
    max_epochs: Optional[int] = typer.Option(None, help="Override max_epochs."),
    data_dir: Optional[Path] = typer.Option(None, help="Processed data folder (default data/processed/<dataset>)."),
    out: Optional[Path] = typer.Option(None, help="Run folder (default models/<dataset>/<variant>/seed<seed>)."),
    resume: bool = typer.Option(False, help="Continue from <out>/last.pt (error if its settings differ; without "
                                            "checkpoints it says so and starts afresh)."),
    resume_if_compatible: bool = typer.Option(
        False, help="Continue from last.pt when its settings match, else start afresh (used by the workflows)."
    ),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    gpu_slots: int = typer.Option(
        0, envvar="MCLREC_GPU_SLOTS", min=0,
        help="Share GPUs: claim one of N slots per visible GPU (the least-loaded GPU) and train only on it; 0 = off. "
             "Env: MCLREC_GPU_SLOTS.",
    ),
    deterministic: bool = typer.Option(
        False, envvar="MCLREC_DETERMINISTIC",
        help="Deterministic CUDA kernels (torch.use_deterministic_algorithms, CUBLAS_WORKSPACE_CONFIG); slower. "
             "Env: MCLREC_DETERMINISTIC=1.",
    ),
) -> None:
    """Train one variant on one dataset: best.pt, last.pt, log.jsonl and summary.json in the run folder.

    Over several processes: `mclrec train --nproc N ...` starts them itself; `torchrun --nproc-per-node N -m mclrec
    train ...` runs this command as each of torchrun's processes."""
    from mclrec.data.processed import load_processed
    from mclrec.device import enable_determinism
    from mclrec.training.distributed import Group
    from mclrec.training.trainer import train as run_training

    with user_errors():
        launched = int(os.environ.get("WORLD_SIZE", "1"))  # > 1: this is one of torchrun's processes
        if launched > 1 and nproc not in (None, launched):
            raise MclrecError(f"--nproc {nproc}, but torchrun started {launched} processes (WORLD_SIZE)")
        overrides = config.parse_overrides(set_)
        for key, value in (("seed", seed), ("device", device), ("max_epochs", max_epochs), ("nproc", nproc)):
            if value is not None:
                overrides[key] = value
        loaded = config.load_params(params)
        if gpu_slots:
            # nproc as params.yaml, the variant or --set give it, read without torch: the slot must be claimed
            # (CUDA_VISIBLE_DEVICES narrowed) before anything asks CUDA for its devices
            settings = config.resolve_run(loaded, dataset, variant, overrides)
            if launched > 1 or settings["nproc"] > 1:
                raise MclrecError(f"--gpu-slots (MCLREC_GPU_SLOTS) shares one GPU between trainings, but this training "
                                  f"runs over {max(launched, settings['nproc'])} processes, one GPU each: unset "
                                  f"MCLREC_GPU_SLOTS or train with nproc 1")
            from mclrec.gpu_slots import claim_for_this_process

            _slot = claim_for_this_process(gpu_slots)  # noqa: F841 - the lock is held until this process ends
        if deterministic:
            enable_determinism()
        cfg = config.run_config(loaded, dataset, variant, overrides)
        if launched > 1:
            if cfg.nproc not in (1, launched):
                raise MclrecError(f"nproc is {cfg.nproc} (params.yaml or --set), but torchrun started {launched} "
                                  "processes (WORLD_SIZE)")
            cfg = cfg.replace(nproc=launched)
        if threads is not None:
            cfg = cfg.replace(num_threads=max(1, threads // cfg.nproc))
        data = load_processed(data_dir or paths.processed_dir(dataset))
        if data.max_len != cfg.max_len:
            raise MclrecError(f"{data_dir or paths.processed_dir(dataset)}: processed with max_len={data.max_len}, "
                              f"params say {cfg.max_len}; re-run `mclrec preprocess {dataset}`")
        mode = "must" if resume else "if-compatible" if resume_if_compatible else "never"
        group = Group.from_env(cfg.device) if launched > 1 else None
        try:
            summary = run_training(cfg, data, out or paths.run_dir(dataset, variant, cfg.seed), resume=mode,
                                   progress=progress, group=group)
        finally:
            if group is not None:
                group.close()
        if group is not None and not group.is_main:
            return
        err_console.print(f"{dataset}/{variant}: {summary['stopped']}; best {summary['valid_metric']}="
                          f"{summary['best_valid_metric']:.4f} at epoch {summary['best_epoch']} "
                          f"({summary['train_seconds']:.0f} s)")


@app.command()
def evaluate(
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset name from params.yaml."),
    variant: Optional[str] = typer.Option(None, "--variant", "--model", "-m", help="Variant (locates the default checkpoint)."),
    checkpoint: Optional[Path] = typer.Option(
        None, help="Checkpoint file (default models/<dataset>/<variant>/seed<seed>/best.pt)."),
    seed: Optional[int] = RunSeedOpt,
    checkpoint_format: CheckpointFormat = typer.Option(
        CheckpointFormat.mclrec, help="mclrec, or recbole (a SASRec-family RecBole state dict)."),
    published: Optional[str] = typer.Option(
        None, help="A published checkpoint declared in params.yaml (checkpoints.<name>), after `mclrec download NAME`."
    ),
    n_heads: Optional[int] = typer.Option(None, "--n-heads", min=1,
                                          help="Attention heads of a RecBole file without a pickled config."),
    item_order: Optional[ItemOrder] = ItemOrderOpt,
    params: Path = ParamsOpt,
    output: Optional[Path] = typer.Option(
        None, help="Results JSON (default results/<dataset>/<variant>.json, or .../<variant>/seed<k>.json with --seed)."),
    data_dir: Optional[Path] = typer.Option(None, help="Processed data folder (default data/processed/<dataset>)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Users scored per chunk (default evaluate.batch_size)."),
    noise: Optional[list[float]] = typer.Option(
        None, help="Test-time noise ratio (Fig. 7), repeatable (default evaluate.noise; --noise 0 for none)."),
    groups: Optional[bool] = typer.Option(
        None, help="Also report users grouped by sequence length (=5, 6-8, >8, Fig. 8; <5 first where users are "
                   "that short); default evaluate.groups."),
    noise_seed: Optional[int] = typer.Option(None, help="Seed of the noise insertion (default evaluate.noise_seed)."),
    threads: Optional[int] = ScoringThreadsOpt,
) -> None:
    """Full-ranking HR/NDCG/MRR@k on valid and test; writes the results JSON and per-user test ranks.

    What is computed (cut-offs, noise ratios, length groups, chunk size) comes from params.yaml `evaluate`."""
    from mclrec.data.processed import load_processed
    from mclrec.evaluation.evaluate import evaluate_run, write_results

    with user_errors():
        check_device_name(device)  # before any data or checkpoint is read
        wrong = [r for r in noise or () if not 0 <= r <= 1]
        if wrong:
            raise MclrecError(f"--noise {wrong[0]}: a noise ratio is in (0, 1] (random items inserted per item of "
                              "the sequence, as evaluate.noise), or 0 for none")
        params_dict = config.load_params(params)
        config.dataset_spec(params_dict, dataset)
        if published is not None:
            if checkpoint is not None or variant is not None:
                raise MclrecError("--published names the checkpoint: give it without --variant or --checkpoint")
            checkpoint, checkpoint_format = _published_checkpoint(params_dict, published, dataset)
            n_heads = n_heads or params_dict["checkpoints"][published].get("n_heads")
            variant = published
        if checkpoint is None and variant is None:
            raise MclrecError("give --variant (to use models/<dataset>/<variant>/seed<seed>/best.pt), --checkpoint FILE "
                              "or --published NAME")
        run_seed = params_dict["train"]["seed"] if seed is None else seed
        ckpt = checkpoint or paths.run_dir(dataset, variant, run_seed) / paths.RUN_BEST
        if output is None and variant is None:
            raise MclrecError("give --output FILE when evaluating a checkpoint without --variant")
        if output is not None:
            check_output_file(output, "--output")
            if output.suffix != ".json":  # the side files are named from it: <stem>.metrics.json, <stem>.ranks.npy
                raise MclrecError(f"{output}: --output must end in .json (a results JSON)")
        folder = data_dir or paths.processed_dir(dataset)
        data = load_processed(folder)
        settings = params_dict["evaluate"]
        ratios = tuple(r for r in (noise or settings["noise"]) if r > 0)  # --noise 0 alone: no noise
        checkpoint_format = CheckpointFormat(checkpoint_format).value
        item_labels = None
        if checkpoint_format == "recbole":
            from mclrec.recommend import Catalogue

            item_labels = Catalogue.load(folder).item_labels
        _use_threads(threads)
        run = None  # the run an mclrec checkpoint's results belong to, for the check below and the settings note
        if checkpoint_format == "mclrec" and published is None:
            own = _run_of_checkpoint(ckpt, dataset)
            named = variant is not None and own(variant)
            if (checkpoint is None or output is None) and not named:  # results filed under -m's name
                raise MclrecError(f"{checkpoint}: a '{own.name}' run, which -m {variant} would file as {variant}'s "
                                  f"results ({paths.result_file(dataset, variant)}); give -m {own.name} or --output "
                                  "FILE")
            run = variant if named else own.name
        record, ranks = evaluate_run(
            dataset, data, ckpt, checkpoint_format, device, batch_size or settings["batch_size"],
            tuple(settings["ks"]), ratios, settings["groups"] if groups is None else groups,
            settings["noise_seed"] if noise_seed is None else noise_seed, variant, n_heads,
            item_order and ItemOrder(item_order).value, item_labels)
        if checkpoint_format == "recbole" and record["config"].get("item_order") != "dataset":
            how = record["config"]["item_order"]
            err_console.print(f"{ckpt}: item rows moved to our item ids by " + (
                "the file's item_id_tokens" if how == "item_id_tokens" else f"--item-order {how}"))
        if published is not None:
            record["published"] = {"name": published, **config.checkpoint_spec(params_dict, published)}
        if run is not None:
            _note_settings_beyond_params(record, params_dict, dataset, run, ckpt)
        single = seed is None or checkpoint is not None
        dest = output or paths.result_file(dataset, variant if single else paths.seed_result(variant, seed))
        write_results(dest, record, ranks)
        test = record["metrics"]["test"]
        err_console.print(f"{dest}: test " + " ".join(f"{k}={test[k]:.4f}" for k in test if k.endswith(("@10", "@20"))))


@dataclass(frozen=True)
class CheckpointRun:
    """Which run an mclrec checkpoint is: `name`, the grid cell or variant its run folder (models/<d>/<run>/seed<k>/)
    names when it was trained as that, else the variant it was trained as; a file outside a run folder can also be
    named as any grid cell of that variant (the settings note then compares the cell's)."""

    name: str
    dataset: str
    trained_as: str
    in_run_folder: bool

    def __call__(self, run: str) -> bool:
        """Whether `run` (a variant or grid cell, as -m gives it) names this checkpoint's run."""
        if self.in_run_folder:
            return run == self.name
        return run_of(self.dataset, run, 0).variant == self.trained_as


def _run_of_checkpoint(checkpoint: Path, dataset: str) -> CheckpointRun:
    """The run an mclrec checkpoint file belongs to (CheckpointRun)."""
    from mclrec.checkpoint import load_checkpoint

    trained_as = load_checkpoint(checkpoint)["config"].get("variant")
    if trained_as is None:
        raise MclrecError(f"{checkpoint}: its settings name no variant (not a checkpoint `mclrec train` wrote?)")
    folder = paths.run_of_run_dir(checkpoint)
    if folder is not None and run_of(dataset, folder, 0).variant == trained_as:
        return CheckpointRun(folder, dataset, trained_as, True)
    return CheckpointRun(trained_as, dataset, trained_as, False)


def _note_settings_beyond_params(record: dict, params: dict, dataset: str, run: str, checkpoint: Path) -> None:
    """Record (`settings_beyond_params`) and say on stderr where a checkpoint was trained with settings params.yaml
    does not give its run now: a hand run with --set on the workflow's paths, or a run from before a default
    changed. The results are the checkpoint's either way; this says which settings they belong to."""
    from mclrec.provenance import settings_beyond_params
    from mclrec.run_options import set_options

    beyond = settings_beyond_params(record["config"], params, dataset, run, record["environment"].get("device"))
    if beyond:
        record["settings_beyond_params"] = beyond
        err_console.print(f"note: {checkpoint} was trained with settings params.yaml does not give {dataset}/{run} "
                          f"now ({set_options(beyond)}); its results JSON records them (settings_beyond_params)",
                          soft_wrap=True)


def _published_checkpoint(params: dict, name: str, dataset: str) -> tuple[Path, str]:
    """The verified file and format of a published checkpoint; refused for another dataset or a changed file."""
    from mclrec.data.download import verify_existing

    spec = config.checkpoint_spec(params, name)
    if spec["dataset"] != dataset:
        raise MclrecError(f"params.yaml: checkpoints.{name} was trained on dataset '{spec['dataset']}', "
                          f"not '{dataset}'; use it with --dataset {spec['dataset']}")
    path = paths.published_checkpoint(name, spec["filename"])
    if not path.is_file():
        raise MclrecError(f"{path}: not there yet; run `mclrec download {name}` (MCLREC_MIRROR for a local copy)")
    verify_existing(path, spec["sha256"], f"params.yaml: checkpoints.{name}.sha256")
    return path, spec["format"]


@app.command()
def recommend(
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset name from params.yaml."),
    variant: Optional[str] = typer.Option(None, "--variant", "--model", "-m", help="Variant (models/<d>/<v>/seed<seed>/best.pt)."),
    checkpoint: Optional[Path] = typer.Option(None, help="Checkpoint file instead of the variant's best.pt."),
    checkpoint_format: CheckpointFormat = typer.Option(CheckpointFormat.mclrec, help="mclrec or recbole."),
    published: Optional[str] = typer.Option(None, help="A published checkpoint declared in params.yaml."),
    n_heads: Optional[int] = typer.Option(None, "--n-heads", min=1,
                                          help="Attention heads of a RecBole file without a pickled config."),
    item_order: Optional[ItemOrder] = ItemOrderOpt,
    user: list[str] = typer.Option([], "--user", "-u", help="A user's original id (repeatable)."),
    users_file: Optional[Path] = typer.Option(None, help="A file of original user ids, one per line."),
    all_users: bool = typer.Option(False, "--all-users", help="Every user of the dataset."),
    items: Optional[str] = typer.Option(None, help="An ad-hoc sequence of original item ids, oldest first, comma-separated."),
    k: int = typer.Option(10, "--k", min=1, help="Items per user."),
    exclude_seen: bool = typer.Option(
        False, "--exclude-seen", help="Never recommend an item the user already had (fewer than k rows where fewer "
                                      "are left)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o",
                                          help="Write .csv, .jsonl or .parquet (user, rank, item, score); default: CSV on stdout."),
    params: Path = ParamsOpt,
    data_dir: Optional[Path] = typer.Option(None, help="Processed data folder (default data/processed/<dataset>)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    progress: bool = typer.Option(True, help="Show a progress bar (with --all-users)."),
    skip_unknown: bool = typer.Option(
        False, "--skip-unknown", help="Leave out users the dataset does not know (listed on stderr) instead of "
                                      "refusing the request (--user, --users-file)."),
    seed: Optional[int] = RunSeedOpt,
    threads: Optional[int] = ScoringThreadsOpt,
) -> None:
    """Top-k items for users named by their original ids (or all users), or after an ad-hoc item sequence."""
    import numpy as np
    from rich.progress import Progress

    from mclrec.data.processed import load_processed
    from mclrec.device import resolve_device
    from mclrec.vector_math import resolve_vector_math
    from mclrec.evaluation.evaluate import load_encoder
    from mclrec.recommend import (DEFAULT_BUCKETS, Catalogue, iter_recommendations, read_users_file,
                                  recommend_sequence, write_frame, write_recommendations)

    with user_errors():
        check_device_name(device)  # before any data or checkpoint is read
        params_dict = config.load_params(params)
        config.dataset_spec(params_dict, dataset)
        chosen = sum(bool(x) for x in (user, users_file, all_users, items is not None))
        if chosen != 1:
            raise MclrecError("say whom to recommend for: --user ID (repeatable), --users-file FILE, --all-users or "
                              "--items ID,ID,... (exactly one of them)")
        if output is not None:
            check_output_file(output, "--output")
        if output is not None and output.suffix not in (".csv", ".jsonl", ".parquet"):
            raise MclrecError(f"{output}: --output must end in .csv, .jsonl or .parquet")
        names, places = (list(user), None) if not users_file else read_users_file(users_file)
        if skip_unknown and (all_users or items is not None):
            raise MclrecError("--skip-unknown applies to users named by --user or --users-file")
        fmt = CheckpointFormat(checkpoint_format).value
        if published is not None and (checkpoint is not None or variant is not None):
            raise MclrecError("--published names the checkpoint: give it without --variant or --checkpoint")
        if variant is not None and not variant.startswith("grid/"):
            config.variant_spec(params_dict, variant)
        if published is not None:
            checkpoint, fmt = _published_checkpoint(params_dict, published, dataset)
            n_heads = n_heads or params_dict["checkpoints"][published].get("n_heads")
        elif checkpoint is None:
            if variant is None:
                raise MclrecError("give --variant, --checkpoint FILE or --published NAME")
            checkpoint = paths.run_dir(dataset, variant, params_dict["train"]["seed"] if seed is None else seed) / \
                paths.RUN_BEST
        folder = data_dir or paths.processed_dir(dataset)
        data, catalogue = load_processed(folder), Catalogue.load(folder)
        dev = resolve_device(device)
        _use_threads(threads)
        resolve_vector_math()
        encoder, meta = load_encoder(checkpoint, fmt, data, dev, n_heads, item_order and ItemOrder(item_order).value,
                                     catalogue.item_labels)
        trained_as = meta["config"].get("variant")
        if fmt == "mclrec" and variant is not None and run_of(dataset, variant, 0).variant != trained_as:
            raise MclrecError(f"{checkpoint}: a '{trained_as}' run, not {variant}; leave -m out or give "
                              f"-m {trained_as}")
        if fmt == "recbole" and meta["config"].get("item_order") != "dataset":
            how = meta["config"]["item_order"]
            err_console.print(f"{checkpoint}: item rows moved to our item ids by " + (
                "the file's item_id_tokens" if how == "item_id_tokens" else f"--item-order {how}"))
        buckets = meta["config"].get("length_buckets") or DEFAULT_BUCKETS
        if items is None and not all_users and skip_unknown:
            names, places, unknown = catalogue.known_users(names, places)
            if unknown:
                more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
                err_console.print(f"skipped {len(unknown)} unknown user id(s): {', '.join(unknown[:5])}{more}",
                                  soft_wrap=True)
            if not names:
                raise MclrecError("none of the users is in the processed dataset")
        ids = np.arange(1, data.n_users + 1) if all_users else None if items is not None else \
            catalogue.user_ids(names, places)
        # rich would otherwise route sys.stdout through the bar's console (stderr) while it is live on a terminal
        with Progress(disable=not (progress and all_users), transient=True, console=err_console,
                      redirect_stdout=False, redirect_stderr=False) as bar:
            task = bar.add_task("recommending", total=0 if ids is None else len(ids))
            if items is not None:
                chunks = iter([recommend_sequence(encoder, data, catalogue,
                                                  [x.strip() for x in items.split(",") if x.strip()], k, dev,
                                                  exclude_seen)])
            else:  # chunk by chunk: the rows of all users are never held at once
                chunks = iter_recommendations(encoder, data, catalogue, ids, k, dev, exclude_seen, buckets,
                                              on_chunk=lambda n: bar.advance(task, n))
            if output is None:
                for number, frame in enumerate(chunks):
                    write_frame(frame, sys.stdout, ".csv", header=number == 0)
            else:
                written = write_recommendations(chunks, output)
        if output is not None:
            err_console.print(f"{output}: {written['users']} users x top {k} ({written['rows']} rows)")


export_app = typer.Typer(help="Export a processed split or a trained checkpoint to other tools.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("recbole")
def export_recbole_cmd(
    dataset: str = typer.Argument(..., help="Dataset name from params.yaml (processed first)."),
    params: Path = ParamsOpt,
    data_dir: Optional[Path] = typer.Option(None, help="Processed data folder (default data/processed/<dataset>)."),
    out: Path = typer.Option(Path("export/recbole"), help="Folder for <dataset>/<dataset>.{train,valid,test}.inter."),
) -> None:
    """Write the split as RecBole benchmark files (benchmark_filename), an item-id map and a RecBole config."""
    from mclrec.data.processed import load_processed
    from mclrec.export import export_recbole

    with user_errors():
        config.dataset_spec(config.load_params(params), dataset)
        for place in (out / dataset, *(out / dataset).parents):
            if place.exists() and not place.is_dir():
                raise MclrecError(f"--out {out}: {place} is a file, not a folder")
        folder = data_dir or paths.processed_dir(dataset)
        for path in export_recbole(load_processed(folder), folder, dataset, out):
            err_console.print(str(path))


@export_app.command("recbole-checkpoint")
def export_recbole_checkpoint_cmd(
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset name from params.yaml."),
    variant: Optional[str] = typer.Option(None, "--variant", "--model", "-m",
                                          help="Variant (locates models/<dataset>/<variant>/seed<seed>/best.pt)."),
    seed: Optional[int] = typer.Option(None, help="With --variant: the run of this seed (default train.seed)."),
    checkpoint: Optional[Path] = typer.Option(
        None, help="An mclrec checkpoint file (default models/<dataset>/<variant>/seed<seed>/best.pt)."),
    out: Optional[Path] = typer.Option(
        None, help="The RecBole file (default export/recbole/<dataset>/<variant>.pth, <variant>.seed<k>.pth with --seed)."),
    params: Path = ParamsOpt,
    data_dir: Optional[Path] = typer.Option(None, help="Processed data folder (default data/processed/<dataset>)."),
) -> None:
    """Write a trained encoder as a checkpoint RecBole 1.x's SASRec loads for `mclrec export recbole DATASET`'s split.

    Item-embedding rows follow RecBole's own item numbering of those files (not ours): load it with
    `model.load_state_dict(torch.load(FILE)["state_dict"])` or `trainer.evaluate(test_data, model_file=FILE)`."""
    from mclrec.data.processed import load_processed
    from mclrec.export import export_recbole_checkpoint

    with user_errors():
        params_dict = config.load_params(params)
        config.dataset_spec(params_dict, dataset)
        if checkpoint is None and variant is None:
            raise MclrecError("give --variant (to use models/<dataset>/<variant>/seed<seed>/best.pt) or --checkpoint FILE")
        if variant is not None and not variant.startswith("grid/"):
            config.variant_spec(params_dict, variant)
        if out is None and variant is None:
            raise MclrecError("give --out FILE when exporting a checkpoint without --variant")
        run_seed = params_dict["train"]["seed"] if seed is None else seed
        if checkpoint is None:
            checkpoint = paths.run_dir(dataset, variant, run_seed) / paths.RUN_BEST
            if not checkpoint.is_file():
                raise MclrecError(f"{checkpoint}: checkpoint not found; train it first "
                                  f"(`mclrec train -d {dataset} -m {variant} --seed {run_seed}`) or give --checkpoint FILE")
        if out is None:
            out = Path("export/recbole") / dataset / (f"{variant}.pth" if seed is None else f"{variant}.seed{seed}.pth")
        check_output_file(out, "--out")
        folder = data_dir or paths.processed_dir(dataset)
        written = export_recbole_checkpoint(load_processed(folder), folder, checkpoint, out, dataset, variant)
        dropped = f"; not exported: {', '.join(written['dropped'])}" if written["dropped"] else ""
        err_console.print(f"{written['path']}: RecBole SASRec state dict from {checkpoint} (epoch {written['epoch']}), "
                          f"item_embedding {written['rows']} rows in RecBole's item order{dropped}")


workflow_app = typer.Typer(help="The workflow declarations (src/mclrec/pipeline.py): dvc.yaml and the job list.",
                           no_args_is_help=True)
app.add_typer(workflow_app, name="workflow")


@workflow_app.command("dvc")
def workflow_dvc(
    params: Path = ParamsOpt,
    output: Path = typer.Option(Path("dvc.yaml"), help="Where dvc.yaml goes."),
    check: bool = typer.Option(False, "--check", help="Write nothing; fail (exit 1) when the file is not up to date."),
) -> None:
    """Write dvc.yaml from the workflow declarations and params.yaml (run it after editing params.yaml's lists)."""
    from mclrec import dvc_stages

    with user_errors():
        params_dict = config.load_params(params)
        text = dvc_stages.render(params_dict, config.load_yaml(params.read_text(encoding="utf-8")))
        current = output.read_text(encoding="utf-8") if output.is_file() else None
        if check:
            if current != text:
                err_console.print(f"{output} is stale: it is not what `mclrec workflow dvc` writes from {params} "
                                  f"and src/mclrec/pipeline.py; run `mclrec workflow dvc`")
                raise typer.Exit(1)
            err_console.print(f"{output} is up to date")
            return
        if current != text:
            dvc_stages.write(output, text)
        err_console.print(f"{output}: {'written' if current != text else 'unchanged'}")


@workflow_app.command("jobs")
def workflow_jobs(params: Path = ParamsOpt) -> None:
    """How many trainings and evaluations the workflows declare (plain `dvc repro` builds them all)."""
    from mclrec import pipeline

    with user_errors():
        params_dict = config.load_params(params)
        runs, evaluations = pipeline.runs(params_dict), pipeline.evaluations(params_dict)
        study = len(pipeline.study_runs(params_dict)) * len(params_dict["study"]["seeds"])
        typer.echo(f"trainings: {len(runs)} (study: {study}, single runs outside the study: {len(runs) - study})")
        typer.echo(f"evaluations: {len(evaluations)}; seed aggregates: {len(pipeline.study_runs(params_dict))}")


@app.command("show-config")
def show_config(
    dataset: str = typer.Argument(..., help="Dataset name."),
    variant: str = typer.Argument(..., help="Variant name."),
    params: Path = ParamsOpt,
    set_: list[str] = typer.Option([], "--set", help="Override a setting: key=value (YAML value)."),
) -> None:
    """Print the fully resolved settings of one run as JSON."""
    with user_errors():
        resolved = config.resolve_run(config.load_params(params), dataset, variant, config.parse_overrides(set_))
        typer.echo(json.dumps(resolved, indent=2, sort_keys=True))


_add_report_commands()


def main() -> None:
    """The `mclrec` command and `python -m mclrec`: the CLI, with SIGTERM ending a command through its clean-ups
    (installed here, not in the app's callback, so that running the app inside another program, e.g. a test's
    CliRunner, leaves that program's SIGTERM alone)."""
    os.environ.setdefault("PYTHONHASHSEED", "0")
    exit_on_sigterm()
    app()
