# The paper study: seeds per run, seed aggregates, Tables 3-4, Figures 3/4/6/7/8, report.
# Seed k of a (dataset, variant) trains into models/<d>/<v>/seed<k>/ with seed k.


rule train_seed:
    input:
        processed_files,
    output:
        best="models/{dataset}/{variant}/seed{seed}/best.pt",
        summary="models/{dataset}/{variant}/seed{seed}/summary.json",
        log="models/{dataset}/{variant}/seed{seed}/log.jsonl",
    params:
        settings=run_settings,
    threads: 2
    resources:
        gpu=gpu_jobs,
    log:
        "logs/train/{dataset}/{variant}/seed{seed}.log",
    shell:
        "mclrec train --dataset {wildcards.dataset} --variant {wildcards.variant} --seed {wildcards.seed}"
        " --out models/{wildcards.dataset}/{wildcards.variant}/seed{wildcards.seed} --resume-if-compatible --no-progress"
        " 2> {log}"


rule evaluate_seed:
    input:
        processed_files,
        best="models/{dataset}/{variant}/seed{seed}/best.pt",
        summary="models/{dataset}/{variant}/seed{seed}/summary.json",
    output:
        results="results/{dataset}/{variant}/seed{seed}.json",
        ranks="results/{dataset}/{variant}/seed{seed}.ranks.npy",
    params:
        noise=noise_options,
    log:
        "logs/evaluate/{dataset}/{variant}/seed{seed}.log",
    shell:
        "mclrec evaluate --dataset {wildcards.dataset} --variant {wildcards.variant} --checkpoint {input.best}"
        " --output {output.results} {params.noise} --groups 2> {log}"


rule train_grid:
    input:
        processed_files,
    output:
        best="models/{dataset}/grid/l{lam}-b{beta}/seed{seed}/best.pt",
        summary="models/{dataset}/grid/l{lam}-b{beta}/seed{seed}/summary.json",
        log="models/{dataset}/grid/l{lam}-b{beta}/seed{seed}/log.jsonl",
    threads: 2
    resources:
        gpu=gpu_jobs,
    log:
        "logs/train/{dataset}/grid/l{lam}-b{beta}/seed{seed}.log",
    shell:
        "mclrec train --dataset {wildcards.dataset} --variant mclrec --seed {wildcards.seed}"
        " --set lambda_cl1={wildcards.lam} --set beta={wildcards.beta}"
        " --out models/{wildcards.dataset}/grid/l{wildcards.lam}-b{wildcards.beta}/seed{wildcards.seed}"
        " --resume-if-compatible --no-progress 2> {log}"


rule evaluate_grid:
    input:
        processed_files,
        best="models/{dataset}/grid/l{lam}-b{beta}/seed{seed}/best.pt",
        summary="models/{dataset}/grid/l{lam}-b{beta}/seed{seed}/summary.json",
    output:
        results="results/{dataset}/grid/l{lam}-b{beta}/seed{seed}.json",
        ranks="results/{dataset}/grid/l{lam}-b{beta}/seed{seed}.ranks.npy",
    log:
        "logs/evaluate/{dataset}/grid/l{lam}-b{beta}/seed{seed}.log",
    shell:
        "mclrec evaluate --dataset {wildcards.dataset} --variant mclrec --checkpoint {input.best}"
        " --output {output.results} 2> {log}"


rule aggregate_seeds:
    input:
        seed_results,
    output:
        "results/{dataset}/{variant}/aggregate.json",
    log:
        "logs/aggregate/{dataset}/{variant}.log",
    shell:
        "mclrec report aggregate {output} {input} 2> {log}"


use rule aggregate_seeds as aggregate_grid with:
    input:
        grid_seed_results,
    output:
        "results/{dataset}/grid/l{lam}-b{beta}/aggregate.json",
    log:
        "logs/aggregate/{dataset}/grid/l{lam}-b{beta}.log",


rule table:
    input:
        table_inputs,
    output:
        md="results/tables/table{number}.md",
        csv="results/tables/table{number}.csv",
    log:
        "logs/report/table{number}.log",
    shell:
        "mclrec report table {wildcards.number} 2> {log}"


rule figure:
    input:
        figure_inputs,
    output:
        "results/figures/{figure}.png",
    log:
        "logs/report/{figure}.log",
    shell:
        "mclrec report figure {wildcards.figure} 2> {log}"


rule report:
    input:
        tables=expand("results/tables/table{number}.{ext}", number=(3, 4), ext=("md", "csv")),
        figures=expand("results/figures/{figure}.png", figure=FIGURES),
    output:
        "results/report.md",
    log:
        "logs/report/report.log",
    shell:
        "mclrec report render 2> {log}"
