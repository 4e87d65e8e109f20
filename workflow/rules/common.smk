# Shared configuration and small lookup helpers for the rules (no pipeline logic here).

import os

from mclrec.config import load_params, resolve_run

from mclrec.device import visible_gpu_count

# params.yaml read exactly as the CLI reads it: schema-validated (errors name file, line and key), defaults
# filled in, numbers such as 1e-4 parsed as numbers (YAML 1.2, as DVC reads the file too).
config.update(load_params("params.yaml"))

PROCESSED_FILES = ["train.parquet", "valid.parquet", "test.parquet", "items.parquet", "users.parquet", "stats.json"]

DATASETS = list(config["datasets"])
VARIANTS = list(config["variants"])
CHECKPOINTS = config.get("checkpoints", {})
STUDY = config["study"]
CUDA_AVAILABLE = visible_gpu_count() > 0  # no torch import while parsing
SEEDS = STUDY["seeds"]
FIGURES = ["joint_vs_meta", "batch_sizes", "groups_trained"]
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
    view="z|h",
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
    """A training takes one `gpu_slots` unit on a machine with a GPU (the profile caps how many run at once), else 0."""
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


TSNE_VARIANTS = {"z": ["mclrec", "mclrec-no-reg"], "h": ["mclrec", "mclrec-j"]}  # Fig. 2 and Fig. 5


def tsne_checkpoints(wildcards):
    """The first study seed's checkpoints whose views a t-SNE figure maps (of the variants params.yaml declares)."""
    variants = [v for v in TSNE_VARIANTS[wildcards.view] if v in VARIANTS]
    return expand("models/{dataset}/{variant}/seed{seed}/best.pt", dataset=wildcards.dataset, variant=variants,
                  seed=SEEDS[0])


def reference_results(wildcards):
    """The committed reference runs (results/reference/<d>/<v>.json) that exist for Table 3's datasets and variants."""
    if wildcards.number != "3":
        return []
    found = expand("results/reference/{dataset}/{variant}.json", dataset=STUDY["datasets"], variant=STUDY["table3"])
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
        return expand("results/aggregate/{dataset}/grid/l{lam}-b{beta}.json", dataset=wildcards.dataset,
                      lam=STUDY["grid"]["lambdas"], beta=STUDY["grid"]["betas"])
    return aggregates(STUDY["robustness"], [wildcards.dataset])


def report_inputs():
    """Everything results/report.md shows, plus the aggregates of every study run (what `dvc repro report` builds)."""
    return {
        "tables": expand("results/tables/table{number}.{ext}", number=(3, 4), ext=("md", "csv")),
        "figures": expand("results/figures/{figure}.png", figure=FIGURES)
        + expand("results/figures/{kind}-{dataset}.png", kind=DATASET_FIGURES, dataset=STUDY["datasets"])
        + expand("results/figures/tsne-{view}-{dataset}.png", dataset=STUDY["datasets"],
                 view=[view for view, names in TSNE_VARIANTS.items() if set(names) & set(VARIANTS)]),
        "curves": expand("results/figures/curves/{dataset}/{variant}.png", dataset=STUDY["datasets"], variant=VARIANTS),
        "aggregates": aggregates(VARIANTS),
    }
