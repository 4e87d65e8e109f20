# Shared configuration and small lookup helpers for the rules (no pipeline logic here).

from mclrec.config import SCHEMA_PATH, resolve_run, settings_defaults
from snakemake.utils import validate


configfile: "params.yaml"


validate(config, str(SCHEMA_PATH), set_default=False)
config["train"] = {**settings_defaults(), **config["train"]}

PROCESSED_FILES = ["train.parquet", "valid.parquet", "test.parquet", "items.parquet", "users.parquet", "stats.json"]

DATASETS = list(config["datasets"])


wildcard_constraints:
    dataset="[a-z0-9][a-z0-9_-]*",
    variant="[a-z0-9][a-z0-9_-]*",
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
