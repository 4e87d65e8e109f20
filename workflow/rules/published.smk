# Published checkpoints (params.yaml `checkpoints`): download or take from MCLREC_MIRROR, verify, evaluate.
# results/<dataset>/<name>.json has the schema of a trained run's results JSON.


rule download_checkpoint:
    output:
        "models/published/{checkpoint}/{filename}",
    params:
        source=checkpoint_section,
    log:
        "logs/download/published/{checkpoint}/{filename}.log",
    shell:
        "mclrec download {wildcards.checkpoint} 2> {log}"


rule evaluate_published:
    input:
        processed_files,
        checkpoint=published_file,
    output:
        results="results/{dataset}/{checkpoint}.json",
        metrics="results/{dataset}/{checkpoint}.metrics.json",
        ranks="results/{dataset}/{checkpoint}.ranks.npy",
    log:
        "logs/evaluate/{dataset}/{checkpoint}.log",
    shell:
        "mclrec evaluate --dataset {wildcards.dataset} --published {wildcards.checkpoint} 2> {log}"
