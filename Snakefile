# mclrec workflow: every stage is a rule in workflow/rules/ that calls the `mclrec` CLI.
# Parameters live in params.yaml (validated against mclrec's schema); see README.md.

include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/published.smk"
include: "workflow/rules/study.smk"


rule all:
    input:
        all_processed_stats(),
