# Shared configuration and small lookup helpers for the rules (no pipeline logic here).

from mclrec.config import SCHEMA_PATH, resolve_run, settings_defaults, study_defaults
from snakemake.utils import validate

from mclrec.training.device import cuda_available


configfile: "params.yaml"


validate(config, str(SCHEMA_PATH), set_default=False)
config["train"] = {**settings_defaults(), **config["train"]}

PROCESSED_FILES = ["train.parquet", "valid.parquet", "test.parquet", "items.parquet", "users.parquet", "stats.json"]

config["study"] = {**study_defaults(), **config.get("study", {})}

DATASETS = list(config["datasets"])
VARIANTS = list(config["variants"])
CHECKPOINTS = config.get("checkpoints", {})
STUDY = config["study"]
CUDA_AVAILABLE = cuda_available()
SEEDS = STUDY["seeds"]
FIGURES = ["joint_vs_meta", "batch_sizes"]
DATASET_FIGURES = ["noise", "groups", "grid"]


wildcard_constraints:
    dataset="[a-z0-9][a-z0-9_-]*",
    variant="|".join(VARIANTS),
    checkpoint="|".join(CHECKPOINTS) or "(?!)",
    seed="[0-9]+",
    number="[34]",
    lam="[0-9.]+",
    beta="[0-9.]+",
    figure="|".join(FIGURES),
    kind="|".join(DATASET_FIGURES),
    filename="[^/]+",


def raw_file(wildcards):
    """The raw file a dataset's preprocessing reads."""
    return f"data/raw/{wildcards.dataset}/{config['datasets'][wildcards.dataset]['filename']}"


def dataset_source(wildcards):
    """The dataset's source entry (a rule param, so a new URL or checksum re-triggers download)."""
    return config["datasets"][wildcards.dataset]["source"]


def checkpoint_section(wildcards):
    """A published checkpoint's params.yaml entry (a rule param, so a new URL or checksum re-triggers download)."""
    return CHECKPOINTS[wildcards.checkpoint]


def published_file(wildcards):
    """Where a published checkpoint lies once downloaded; only for the dataset it was declared with."""
    spec = CHECKPOINTS[wildcards.checkpoint]
    if spec["dataset"] != wildcards.dataset:
        raise ValueError(f"params.yaml: checkpoints.{wildcards.checkpoint} belongs to dataset '{spec['dataset']}', "
                         f"not '{wildcards.dataset}'")
    return f"models/published/{wildcards.checkpoint}/{spec['filename']}"


def dataset_section(wildcards):
    """The dataset's params.yaml entry (a rule param, so edits re-trigger the rule)."""
    return config["datasets"][wildcards.dataset]


def processed_files(wildcards):
    """The Parquet splits and stats.json a training or evaluation reads."""
    return expand("data/processed/{dataset}/{name}", dataset=wildcards.dataset, name=PROCESSED_FILES)


def run_settings(wildcards):
    """The fully resolved settings of a run (a rule param, so a params.yaml edit re-triggers training)."""
    return resolve_run(config, wildcards.dataset, wildcards.variant)


def grid_settings(wildcards):
    """The resolved settings of a lambda x beta grid run (mclrec with lambda_cl1 and beta set)."""
    cell = {"lambda_cl1": float(wildcards.lam), "beta": float(wildcards.beta)}
    return resolve_run(config, wildcards.dataset, "mclrec", cell)


def all_processed_stats():
    """stats.json of every dataset declared in params.yaml."""
    return expand("data/processed/{dataset}/stats.json", dataset=DATASETS)


def gpu_jobs(wildcards):
    """1 when this machine has a CUDA GPU (the `gpu` resource keeps two trainings off one GPU), else 0."""
    return int(CUDA_AVAILABLE)


def seed_results(wildcards):
    """The per-seed results (JSON and test ranks) a study run's aggregate reads."""
    run = f"results/{wildcards.dataset}/{wildcards.variant}"
    return expand("{run}/seed{seed}.{ext}", run=run, seed=SEEDS, ext=("json", "ranks.npy"))


def grid_seed_results(wildcards):
    """The per-seed results of one grid cell."""
    run = f"results/{wildcards.dataset}/grid/l{wildcards.lam}-b{wildcards.beta}"
    return expand("{run}/seed{seed}.{ext}", run=run, seed=SEEDS, ext=("json", "ranks.npy"))


def seed_logs(wildcards):
    """The training logs of every seed of a study run (its training-curves figure)."""
    return expand("models/{dataset}/{variant}/seed{seed}/log.jsonl", dataset=wildcards.dataset,
                  variant=wildcards.variant, seed=SEEDS)


def aggregates(variants, datasets=None):
    """Seed aggregates (JSON and stacked ranks) of `variants` on `datasets` (default: every study dataset)."""
    return expand("results/aggregate/{dataset}/{variant}.{ext}", dataset=datasets or STUDY["datasets"],
                  variant=variants, ext=("json", "ranks.npy"))


def table_inputs(wildcards):
    """Aggregates a paper table needs."""
    return aggregates(STUDY[f"table{wildcards.number}"])


def figure_inputs(wildcards):
    """Aggregates a cross-dataset figure (Fig. 3, Fig. 4) needs."""
    if wildcards.figure == "joint_vs_meta":
        return aggregates(STUDY["joint_vs_meta"])
    return aggregates(list(STUDY["batch_sizes"].values()))


def dataset_figure_inputs(wildcards):
    """Aggregates a per-dataset figure needs: the lambda x beta grid (Fig. 6) or the robustness variants (Figs. 7-8)."""
    if wildcards.kind == "grid":
        return expand("results/aggregate/{dataset}/grid/l{lam}-b{beta}.json", dataset=wildcards.dataset,
                      lam=STUDY["grid"]["lambdas"], beta=STUDY["grid"]["betas"])
    return aggregates(STUDY["robustness"], [wildcards.dataset])


def report_inputs():
    """Everything results/report.md shows, plus the aggregates of every study run (what `dvc repro report` builds)."""
    return {
        "tables": expand("results/tables/table{number}.{ext}", number=(3, 4), ext=("md", "csv")),
        "figures": expand("results/figures/{figure}.png", figure=FIGURES)
        + expand("results/figures/{kind}-{dataset}.png", kind=DATASET_FIGURES, dataset=STUDY["datasets"]),
        "curves": expand("results/figures/curves/{dataset}/{variant}.png", dataset=STUDY["datasets"], variant=VARIANTS),
        "aggregates": aggregates(VARIANTS),
    }
