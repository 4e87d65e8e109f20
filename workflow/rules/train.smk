# Model stages: train one variant on one dataset, then evaluate its best checkpoint.
# A re-run after a kill continues from models/<dataset>/<variant>/last.pt (same settings).


rule train:
    input:
        processed_files,
    output:
        best="models/{dataset}/{variant}/best.pt",
        summary="models/{dataset}/{variant}/summary.json",
        log="models/{dataset}/{variant}/log.jsonl",
        curves="models/{dataset}/{variant}/curves.json",
    params:
        settings=run_settings,
    threads: 2
    resources:
        gpu_slots=gpu_jobs,
    log:
        "logs/train/{dataset}/{variant}.log",
    shell:
        "mclrec train --dataset {wildcards.dataset} --variant {wildcards.variant} --resume-if-compatible --no-progress"
        " 2> {log}"


rule evaluate:
    input:
        processed_files,
        best="models/{dataset}/{variant}/best.pt",
        summary="models/{dataset}/{variant}/summary.json",
    output:
        results="results/{dataset}/{variant}.json",
        metrics="results/{dataset}/{variant}.metrics.json",
        ranks="results/{dataset}/{variant}.ranks.npy",
    log:
        "logs/evaluate/{dataset}/{variant}.log",
    shell:
        "mclrec evaluate --dataset {wildcards.dataset} --variant {wildcards.variant} 2> {log}"
