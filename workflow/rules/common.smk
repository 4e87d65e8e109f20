# Shared configuration and lookups for the rules. What each job kind runs and writes (command, outputs, log,
# code) is declared once in src/mclrec/pipeline.py, which dvc.yaml is written from too.

import os
import re
from pathlib import Path

from mclrec import paths, pipeline
from mclrec.config import load_params, raw_source, resolve_run
from mclrec.device import visible_gpu_count

# params.yaml read exactly as the CLI reads it: schema-validated (errors name file, line and key), defaults
# filled in, numbers such as 1e-4 parsed as numbers (YAML 1.2, as DVC reads the file too).
config.update(load_params("params.yaml"))

DATASETS = list(config["datasets"])
VARIANTS = list(config["variants"])
CHECKPOINTS = config.get("checkpoints", {})
STUDY = config["study"]
SEEDS = STUDY["seeds"]
CUDA_AVAILABLE = visible_gpu_count() > 0  # no torch import while parsing
RUN_PATTERN = "(?:{})|grid/l[0-9.]+-b[0-9.]+".format("|".join(map(re.escape, VARIANTS)))
# Code-aware re-runs need the package source beside the Snakefile (a clone); without it, only params and data count.
SOURCE_TREE = Path(pipeline.SOURCE_ROOT).is_dir()


def names_pattern(names):
    """A wildcard constraint matching exactly these names (or nothing)."""
    return "|".join(map(re.escape, names)) or "(?!)"


def code(kind):
    """The package source files a job kind runs (an edit to one of them re-runs its jobs)."""
    return list(pipeline.code_files(pipeline.KINDS[kind].code)) if SOURCE_TREE else []


def raw_file(wildcards):
    """The raw file a dataset's preprocessing reads (a length group: its parent's)."""
    owner = raw_source(config, wildcards.dataset)
    return paths.RAW.format(dataset=owner, filename=config["datasets"][wildcards.dataset]["filename"])


def dataset_source(wildcards):
    """The dataset's source entry (a param of the rule, so a new URL or checksum re-triggers download)."""
    return config["datasets"][wildcards.dataset]["source"]


def dataset_section(wildcards):
    """What preprocessing reads of the dataset's entry (a param of the rule, so edits re-trigger it)."""
    spec = config["datasets"][wildcards.dataset]
    return {"format": spec["format"], "preprocess": spec["preprocess"]}


def checkpoint_section(wildcards):
    """A published checkpoint's params.yaml entry (a param of the rule, so a new URL or checksum re-downloads)."""
    return CHECKPOINTS[wildcards.checkpoint]


def published_file(wildcards):
    """Where a published checkpoint lies once downloaded; only for the dataset it was declared with."""
    spec, name = CHECKPOINTS[wildcards.checkpoint], wildcards.checkpoint
    if spec["dataset"] != wildcards.dataset:
        raise ValueError(
            f"params.yaml: checkpoints.{name} belongs to dataset '{spec['dataset']}', not '{wildcards.dataset}'"
        )
    return str(paths.published_checkpoint(name, spec["filename"]))


def processed_files(wildcards):
    """The Parquet splits and stats.json a training or evaluation reads."""
    return [paths.PROCESSED.format(dataset=wildcards.dataset, name=name) for name in paths.PROCESSED_FILES]


def training(wildcards):
    """The training a train job runs (a variant, or a grid cell: mclrec with lambda_cl1 and beta set)."""
    return pipeline.run_of(wildcards.dataset, wildcards.run, int(wildcards.seed))


def train_args(wildcards):
    """The train command's --variant and --set arguments."""
    return training(wildcards).args


def train_settings(wildcards):
    """The run's resolved training settings (a param of the rule, so a change re-trains). Evaluation settings are
    not among them, so editing `evaluate` re-evaluates without re-training."""
    run = training(wildcards)
    settings = resolve_run(config, run.dataset, run.variant, {k: float(v) for k, v in run.sets})
    settings.pop("eval_batch_size")  # validation chunking: does not change what is trained
    return settings


# An evaluation's torch threads (full ranking: products over the catalogue); Snakemake caps them at --cores, and
# the profile's set-threads overrides them. DVC runs leave torch's default.
EVALUATE_THREADS = 2


def train_threads(wildcards):
    """A training's threads: the run's num_threads when set, else 2, for each of its nproc processes (Snakemake caps
    them at --cores; the profile's set-threads overrides them). The train command passes them to torch, each
    process taking threads // nproc."""
    settings = train_settings(wildcards)
    return (settings["num_threads"] or 2) * settings["nproc"]


def evaluation(wildcards):
    """The evaluation behind a result name (<run>/seed<k>, or a single run: the run of seed train.seed)."""
    return pipeline.evaluation_of(wildcards.dataset, wildcards.result, config["train"]["seed"])


def evaluated_files(wildcards):
    """The checkpoint and summary an evaluation reads."""
    folder = evaluation(wildcards).train.folder
    return {"best": f"{folder}/{paths.RUN_BEST}", "summary": f"{folder}/{paths.RUN_SUMMARY}"}


def gpu_jobs(wildcards):
    """A training takes one `gpu_slots` unit per process on a machine with a GPU (a training over nproc processes
    puts each on its own GPU; the profile caps how many run at once), else 0."""
    return int(CUDA_AVAILABLE) * train_settings(wildcards)["nproc"]


def seed_results(wildcards):
    """The per-seed results (JSON and test ranks) a seed aggregate reads."""
    results = [paths.seed_result(wildcards.run, seed) for seed in SEEDS]
    return [
        pattern.format(dataset=wildcards.dataset, result=result)
        for result in results
        for pattern in (paths.RESULT, paths.RESULT_RANKS)
    ]


def seed_logs(wildcards):
    """The training logs of every seed of a study run (its training-curves figure)."""
    return [str(paths.run_dir(wildcards.dataset, wildcards.variant, seed) / paths.RUN_LOG) for seed in SEEDS]


def aggregates(runs, datasets=None):
    """Seed aggregates (JSON and stacked ranks) of `runs` on `datasets` (default: every study dataset)."""
    return [
        pattern.format(dataset=d, run=r)
        for d in (datasets or STUDY["datasets"])
        for r in runs
        for pattern in (paths.AGGREGATE, paths.AGGREGATE_RANKS)
    ]


def table_inputs(wildcards):
    """Aggregates a paper table needs."""
    return aggregates(STUDY[f"table{wildcards.number}"])


def tsne_checkpoints(wildcards):
    """The first study seed's checkpoints whose views a t-SNE figure maps (of the variants params.yaml declares)."""
    return [
        str(paths.run_dir(wildcards.dataset, v, SEEDS[0]) / paths.RUN_BEST)
        for v in pipeline.TSNE_VARIANTS[wildcards.view]
        if v in VARIANTS
    ]


def reference_results(wildcards):
    """The committed reference runs (results/reference/<d>/<v>.json) that exist for Table 3's datasets and variants."""
    if wildcards.number != "3":
        return []
    found = [f"results/reference/{d}/{v}.json" for d in STUDY["datasets"] for v in STUDY["table3"]]
    return [path for path in found if os.path.exists(path)]


def figure_inputs(wildcards):
    """Aggregates a cross-dataset figure (Fig. 3, Fig. 4) needs."""
    if wildcards.figure == "joint_vs_meta":
        return aggregates(STUDY["joint_vs_meta"])
    if wildcards.figure == "groups_trained":
        return aggregates(STUDY["robustness"], STUDY["length_groups"]) if STUDY["length_groups"] else []
    return aggregates(list(STUDY["batch_sizes"].values()))


def dataset_figure_inputs(wildcards):
    """Aggregates a per-dataset figure needs: the lambda x beta grid (Fig. 6) or the robustness variants (Figs. 7-8)."""
    if wildcards.kind == "grid":
        grid = STUDY["grid"]
        return aggregates(
            [paths.grid_run(lam, beta) for lam in grid["lambdas"] for beta in grid["betas"]], [wildcards.dataset]
        )[::2]
    return aggregates(STUDY["robustness"], [wildcards.dataset])


def report_inputs():
    """Everything results/report.md shows, plus the aggregates of every study run (what `dvc repro report` builds)."""
    tsne_views = [view for view, names in pipeline.TSNE_VARIANTS.items() if set(names) & set(VARIANTS)]
    return {
        "tables": [f"results/tables/table{n}.{ext}" for n in pipeline.TABLES for ext in ("md", "csv")],
        "figures": [f"results/figures/{f}.png" for f in pipeline.FIGURES]
        + [f"results/figures/{k}-{d}.png" for k in pipeline.DATASET_FIGURES for d in STUDY["datasets"]]
        + [f"results/figures/tsne-{v}-{d}.png" for v in tsne_views for d in STUDY["datasets"]],
        "curves": [f"results/figures/curves/{d}/{v}.png" for d in STUDY["datasets"] for v in VARIANTS],
        "aggregates": [a for d, r in pipeline.study_runs(config) for a in aggregates([r], [d])],
    }
