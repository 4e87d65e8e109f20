# mclrec workflow: every rule calls the `mclrec` CLI; what each job kind runs and writes is declared in
# src/mclrec/pipeline.py (dvc.yaml is written from it too: `mclrec workflow dvc`). Parameters: params.yaml.
# `snakemake --cores N` with no target preprocesses every dataset (no training); name a target to train,
# e.g. results/synthetic/mclrec.json (one training) or results/report.md (the paper study).


include: "workflow/rules/common.smk"


wildcard_constraints:
    dataset=names_pattern(DATASETS),
    run=RUN_PATTERN,
    result=f"(?:{RUN_PATTERN})(?:/seed[0-9]+)?",
    variant=names_pattern(VARIANTS),
    checkpoint=names_pattern(CHECKPOINTS),
    seed="[0-9]+",
    number="[34]",
    figure=names_pattern(pipeline.FIGURES),
    kind=names_pattern(pipeline.DATASET_FIGURES),
    view=names_pattern(pipeline.TSNE_VARIANTS),
    filename="[^/]+",


# Cheap jobs run where snakemake runs, never as cluster jobs.
localrules:
    aggregate,
    table,
    figure,
    dataset_figure,
    curves,
    report,


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/published.smk"
include: "workflow/rules/study.smk"


rule all:
    input:
        [paths.PROCESSED.format(dataset=d, name="stats.json") for d in DATASETS],
