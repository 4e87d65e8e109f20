# Data stages: download (or generate) -> preprocess (k-core, leave-one-out Parquet).
# MCLREC_MIRROR=<dir> in the environment makes download copy from a local folder.

rule download:
    output:
        "data/raw/{dataset}/{filename}",
    params:
        source=dataset_source,
    log:
        "logs/download/{dataset}/{filename}.log",
    shell:
        "mclrec download {wildcards.dataset} 2> {log}"


rule preprocess:
    input:
        raw_file,
    output:
        expand("data/processed/{{dataset}}/{name}", name=PROCESSED_FILES),
    params:
        dataset=dataset_section,
    log:
        "logs/preprocess/{dataset}.log",
    shell:
        "mclrec preprocess {wildcards.dataset} 2> {log}"
