# The paper study: seed aggregates, Tables 3-4, Figures 3/4/6/7/8, per-run training curves and the report.
# Its trainings and evaluations are the train and evaluate rules (train.smk); which runs the study has is
# pipeline.study_runs (every variant on the study datasets, the robustness variants on the length groups, the grid).


report: "../report/workflow.rst"


rule aggregate:
    input:
        seed_results,
        code("aggregate"),
    output:
        **pipeline.snakemake_outputs("aggregate"),
    log:
        pipeline.snakemake_log("aggregate"),
    shell:
        pipeline.snakemake_command("aggregate")


rule table:
    input:
        table_inputs,
        reference_results,
    output:
        md=pipeline.snakemake_outputs("table")["md"],
        csv=report(
            pipeline.snakemake_outputs("table")["csv"],
            caption="../report/table.rst",
            category="Tables",
            labels={"table": "Table {number}"},
        ),
    log:
        pipeline.snakemake_log("table"),
    shell:
        pipeline.snakemake_command("table")


rule figure:
    input:
        figure_inputs,
    output:
        report(
            pipeline.snakemake_outputs("figure")["png"],
            caption="../report/figure.rst",
            category="Figures",
            subcategory="all datasets",
            labels={"figure": "{figure}"},
        ),
    log:
        pipeline.snakemake_log("figure"),
    shell:
        pipeline.snakemake_command("figure")


rule dataset_figure:
    input:
        dataset_figure_inputs,
    output:
        report(
            pipeline.snakemake_outputs("dataset_figure")["png"],
            caption="../report/figure.rst",
            category="Figures",
            subcategory="{dataset}",
            labels={"figure": "{kind}", "dataset": "{dataset}"},
        ),
    log:
        pipeline.snakemake_log("dataset_figure"),
    shell:
        pipeline.snakemake_command("dataset_figure")


rule tsne:
    input:
        tsne_checkpoints,
    output:
        report(
            pipeline.snakemake_outputs("tsne")["png"],
            caption="../report/figure.rst",
            category="Figures",
            subcategory="{dataset}",
            labels={"figure": "tsne-{view}", "dataset": "{dataset}"},
        ),
    log:
        pipeline.snakemake_log("tsne"),
    shell:
        pipeline.snakemake_command("tsne")


rule curves:
    input:
        seed_logs,
    output:
        report(
            pipeline.snakemake_outputs("curves")["png"],
            caption="../report/curves.rst",
            category="Training curves",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "variant": "{variant}"},
        ),
    log:
        pipeline.snakemake_log("curves"),
    shell:
        pipeline.snakemake_command("curves")


rule report:
    input:
        **report_inputs(),
    output:
        **pipeline.snakemake_outputs("report"),
    log:
        pipeline.snakemake_log("report"),
    shell:
        pipeline.snakemake_command("report")
