# Published checkpoints (params.yaml `checkpoints`): download or take from MCLREC_MIRROR, verify, evaluate.
# results/<dataset>/<name>.json has the schema of a trained run's results JSON.


rule download_checkpoint:
    output:
        **pipeline.snakemake_outputs("download_checkpoint"),
    log:
        pipeline.snakemake_log("download_checkpoint"),
    params:
        source=checkpoint_section,
    shell:
        pipeline.snakemake_command("download_checkpoint")


rule evaluate_published:
    input:
        processed_files,
        code("evaluate_published"),
        checkpoint=published_file,
    output:
        **pipeline.snakemake_outputs("evaluate_published"),
    log:
        pipeline.snakemake_log("evaluate_published"),
    threads: EVALUATE_THREADS
    params:
        settings=config["evaluate"],
    shell:
        pipeline.snakemake_command("evaluate_published")
