# The paper study: every variant x study dataset x seed, seed aggregates, Tables 3-4, Figures 3/4/6/7/8,
# per-run training curves and the report. Seed k of (dataset, variant) trains into models/<d>/<v>/seed<k>/.
# dvc.yaml declares the same stages with the same commands and outputs (tests/test_workflow_wiring.py).


report: "../report/workflow.rst"


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
        gpu_slots=gpu_jobs,
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
        metrics="results/{dataset}/{variant}/seed{seed}.metrics.json",
        ranks="results/{dataset}/{variant}/seed{seed}.ranks.npy",
    params:
        noise=STUDY["noise"],
    log:
        "logs/evaluate/{dataset}/{variant}/seed{seed}.log",
    shell:
        "mclrec report evaluate-seed {wildcards.dataset} {wildcards.variant} {wildcards.seed} 2> {log}"


rule train_grid:
    input:
        processed_files,
    output:
        best="models/{dataset}/grid/l{lam}-b{beta}/seed{seed}/best.pt",
        summary="models/{dataset}/grid/l{lam}-b{beta}/seed{seed}/summary.json",
        log="models/{dataset}/grid/l{lam}-b{beta}/seed{seed}/log.jsonl",
    params:
        settings=grid_settings,
    threads: 2
    resources:
        gpu_slots=gpu_jobs,
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
        metrics="results/{dataset}/grid/l{lam}-b{beta}/seed{seed}.metrics.json",
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
        json="results/aggregate/{dataset}/{variant}.json",
        metrics="results/aggregate/{dataset}/{variant}.metrics.json",
        ranks="results/aggregate/{dataset}/{variant}.ranks.npy",
    log:
        "logs/aggregate/{dataset}/{variant}.log",
    shell:
        "mclrec report aggregate results/{wildcards.dataset}/{wildcards.variant}"
        " results/aggregate/{wildcards.dataset}/{wildcards.variant}.json 2> {log}"


rule aggregate_grid:
    input:
        grid_seed_results,
    output:
        json="results/aggregate/{dataset}/grid/l{lam}-b{beta}.json",
        metrics="results/aggregate/{dataset}/grid/l{lam}-b{beta}.metrics.json",
        ranks="results/aggregate/{dataset}/grid/l{lam}-b{beta}.ranks.npy",
    log:
        "logs/aggregate/{dataset}/grid/l{lam}-b{beta}.log",
    shell:
        "mclrec report aggregate results/{wildcards.dataset}/grid/l{wildcards.lam}-b{wildcards.beta}"
        " results/aggregate/{wildcards.dataset}/grid/l{wildcards.lam}-b{wildcards.beta}.json 2> {log}"


rule table:
    input:
        table_inputs,
        reference_results,
    output:
        md="results/tables/table{number}.md",
        csv=report("results/tables/table{number}.csv", caption="../report/table.rst", category="Tables",
                   labels={"table": "Table {number}"}),
    log:
        "logs/report/table{number}.log",
    shell:
        "mclrec report table {wildcards.number} 2> {log}"


rule figure:
    input:
        figure_inputs,
    output:
        report("results/figures/{figure}.png", caption="../report/figure.rst", category="Figures",
               subcategory="all datasets", labels={"figure": "{figure}"}),
    log:
        "logs/report/{figure}.log",
    shell:
        "mclrec report figure {wildcards.figure} 2> {log}"


rule dataset_figure:
    input:
        dataset_figure_inputs,
    output:
        report("results/figures/{kind}-{dataset}.png", caption="../report/figure.rst", category="Figures",
               subcategory="{dataset}", labels={"figure": "{kind}", "dataset": "{dataset}"}),
    log:
        "logs/report/{kind}-{dataset}.log",
    shell:
        "mclrec report figure {wildcards.kind}-{wildcards.dataset} 2> {log}"


rule tsne:
    input:
        tsne_checkpoints,
    output:
        report("results/figures/tsne-{view}-{dataset}.png", caption="../report/figure.rst", category="Figures",
               subcategory="{dataset}", labels={"figure": "tsne-{view}", "dataset": "{dataset}"}),
    log:
        "logs/report/tsne-{view}-{dataset}.log",
    shell:
        "mclrec report tsne {wildcards.view} {wildcards.dataset} 2> {log}"


rule curves:
    input:
        seed_logs,
    output:
        report("results/figures/curves/{dataset}/{variant}.png", caption="../report/curves.rst",
               category="Training curves", subcategory="{dataset}",
               labels={"dataset": "{dataset}", "variant": "{variant}"}),
    log:
        "logs/report/curves/{dataset}/{variant}.log",
    shell:
        "mclrec report curves {wildcards.dataset} {wildcards.variant} 2> {log}"


rule report:
    input:
        **report_inputs(),
    output:
        "results/report.md",
    log:
        "logs/report/report.log",
    shell:
        "mclrec report render 2> {log}"
