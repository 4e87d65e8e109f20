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
STUDY = config["study"]
CUDA_AVAILABLE = cuda_available()
SEEDS = range(STUDY["seeds"])
FIGURES = ["joint_vs_meta", "batch_sizes", "grid", "curves"] + [
    f"{kind}-{dataset}" for kind in ("noise", "groups") for dataset in STUDY["datasets"]
]


wildcard_constraints:
    dataset="[a-z0-9][a-z0-9_-]*",
    variant="[a-z0-9][a-z0-9_-]*",
    seed="[0-9]+",
    number="[34]",
    lam="[0-9.]+",
    beta="[0-9.]+",
    figure="|".join(FIGURES),
    filename="[^/]+",


def raw_file(wildcards):
    """The raw file a dataset's preprocessing reads."""
    return f"data/raw/{wildcards.dataset}/{config['datasets'][wildcards.dataset]['filename']}"


def dataset_source(wildcards):
    """The dataset's source entry (a rule param, so a new URL or checksum re-triggers download)."""
    return config["datasets"][wildcards.dataset]["source"]


def dataset_section(wildcards):
    """The dataset's params.yaml entry (a rule param, so edits re-trigger the rule)."""
    return config["datasets"][wildcards.dataset]


def processed_files(wildcards):
    """The Parquet splits and stats.json a training or evaluation reads."""
    return expand("data/processed/{dataset}/{name}", dataset=wildcards.dataset, name=PROCESSED_FILES)


def run_settings(wildcards):
    """The fully resolved settings of a run (a rule param, so a params.yaml edit re-triggers training)."""
    return resolve_run(config, wildcards.dataset, wildcards.variant)


def all_processed_stats():
    """stats.json of every dataset declared in params.yaml."""
    return expand("data/processed/{dataset}/stats.json", dataset=DATASETS)


def gpu_jobs(wildcards):
    """1 when this machine has a CUDA GPU (the `gpu` resource keeps two trainings off one GPU), else 0."""
    return int(CUDA_AVAILABLE)


def noise_options(wildcards):
    """--noise options for the study's test-time noise ratios (Fig. 7)."""
    return " ".join(f"--noise {ratio}" for ratio in STUDY["noise"])


def seed_results(wildcards):
    """The per-seed results an aggregate reads."""
    return expand("results/{dataset}/{variant}/seed{seed}.json", dataset=wildcards.dataset,
                  variant=wildcards.variant, seed=SEEDS)


def grid_seed_results(wildcards):
    """The per-seed results of one grid cell."""
    return expand("results/{dataset}/grid/l{lam}-b{beta}/seed{seed}.json", dataset=wildcards.dataset,
                  lam=wildcards.lam, beta=wildcards.beta, seed=SEEDS)


def aggregates(variants):
    """Seed aggregates of `variants` on every study dataset."""
    return expand("results/{dataset}/{variant}/aggregate.json", dataset=STUDY["datasets"], variant=variants)


def table_inputs(wildcards):
    """Aggregates a paper table needs."""
    return aggregates(STUDY[f"table{wildcards.number}"])


def figure_inputs(wildcards):
    """Aggregates (or logs) a figure needs."""
    name = wildcards.figure
    if name == "joint_vs_meta":
        return aggregates(STUDY["joint_vs_meta"])
    if name == "batch_sizes":
        return aggregates(list(STUDY["batch_sizes"].values()))
    if name == "grid":
        return expand("results/{dataset}/grid/l{lam}-b{beta}/aggregate.json", dataset=STUDY["datasets"],
                      lam=STUDY["grid"]["lambdas"], beta=STUDY["grid"]["betas"])
    if name == "curves":
        return expand("models/{dataset}/mclrec/seed0/log.jsonl", dataset=STUDY["datasets"][:1])
    dataset = name.split("-", 1)[1]
    return expand("results/{dataset}/{variant}/aggregate.json", dataset=dataset, variant=STUDY["robustness"])
