# Trainings and their evaluations. A run is models/<dataset>/<run>/seed<k>/ (<run>: a variant or a grid cell
# grid/l<lambda>-b<beta>); results/<dataset>/<run>/seed<k>.json evaluates it, and the single-run result
# results/<dataset>/<variant>.json evaluates the run of seed train.seed (no training of its own).
# A re-run after a kill continues from the run's last.pt (same settings).


rule train:
    input:
        processed_files,
        code("train"),
    output:
        **pipeline.snakemake_outputs("train"),
    log:
        pipeline.snakemake_log("train"),
    threads: train_threads
    resources:
        gpu_slots=gpu_jobs,
    params:
        settings=train_settings,
        args=train_args,
    shell:
        pipeline.snakemake_command("train")


rule evaluate:
    input:
        unpack(evaluated_files),
        processed_files,
        code("evaluate"),
    output:
        **pipeline.snakemake_outputs("evaluate"),
    log:
        pipeline.snakemake_log("evaluate"),
    threads: EVALUATE_THREADS
    params:
        variant=lambda wildcards: evaluation(wildcards).train.variant,
        checkpoint=lambda wildcards: evaluated_files(wildcards)["best"],
        settings=config["evaluate"],
    shell:
        pipeline.snakemake_command("evaluate")
