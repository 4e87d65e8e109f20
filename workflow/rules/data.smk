# Data: download (or generate) -> preprocess (k-core, leave-one-out Parquet).
# MCLREC_MIRROR=<dir> in the environment makes download copy from a local folder.


rule download:
    output:
        **pipeline.snakemake_outputs("download"),
    log:
        pipeline.snakemake_log("download"),
    params:
        source=dataset_source,
    shell:
        pipeline.snakemake_command("download")


rule preprocess:
    input:
        raw_file,
        code("preprocess"),
    output:
        **pipeline.snakemake_outputs("preprocess"),
    log:
        pipeline.snakemake_log("preprocess"),
    params:
        dataset=dataset_section,
    shell:
        pipeline.snakemake_command("preprocess")
