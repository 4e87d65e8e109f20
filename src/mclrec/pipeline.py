"""The workflow, declared once: every job kind with its command, outputs, tracked params and code.

The Snakefile's rules (workflow/rules/*.smk) take their outputs, shell commands and code inputs from here, and
`mclrec workflow dvc` writes dvc.yaml from the same declarations, expanded over params.yaml (CI fails when the
committed dvc.yaml is not what it would write). Nothing here imports torch: Snakemake imports it while parsing.

Which jobs exist is decided by `runs`, `evaluations` and `aggregates`, from params.yaml: every (dataset, run, seed)
is one training, shared by the single-run result `results/<d>/<v>.json` (the run of seed `train.seed`) and the
study's `results/<d>/<v>/seed<k>.json`.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from mclrec import paths

PACKAGE = Path(__file__).resolve().parent
SOURCE_ROOT = Path("src/mclrec")  # the package source as the workflows see it, from the project root
PARAMS_SCHEMA = "params.schema.yaml"
TSNE_VARIANTS = {"z": ("mclrec", "mclrec-no-reg"), "h": ("mclrec", "mclrec-j")}  # Fig. 2 and Fig. 5
FIGURES = ("joint_vs_meta", "batch_sizes", "groups_trained")
DATASET_FIGURES = ("noise", "groups", "grid")
TABLES = (3, 4)


@dataclass(frozen=True)
class Output:
    """One file a job writes: `out` (cached), `metrics` (DVC metrics) or `plot` (DVC plots, optional x/y keys)."""

    pattern: str
    kind: str = "out"
    plot: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class JobKind:
    """One kind of job: a Snakemake rule and a family of DVC stages.

    `command` is an argument list whose `{name}` fields are wildcards or per-job values; `code` lists the modules
    (entry points) whose source, with everything they import from mclrec, the job's outputs depend on.
    """

    name: str
    command: tuple[str, ...]
    outputs: Mapping[str, Output]
    code: tuple[str, ...] = ()
    log: str = ""

    def wildcards(self) -> list[str]:
        """The placeholders of the output patterns, in order of first appearance."""
        seen: list[str] = []
        for out in self.outputs.values():
            for name in re.findall(r"{(\w+)}", out.pattern):
                if name not in seen:
                    seen.append(name)
        return seen

    def fields(self) -> list[str]:
        """Every placeholder of the outputs and the command (wildcards first), `threads` excepted."""
        names = self.wildcards()
        for part in self.command:
            names += [n for n in re.findall(r"{(\w+)}", part) if n not in names and n != "threads"]
        return names


KINDS: dict[str, JobKind] = {job.name: job for job in (
    JobKind("download", ("mclrec", "download", "{dataset}"),
            {"raw": Output(paths.RAW)}, ("mclrec.data.download", "mclrec.data.synth"), "download/{dataset}/{filename}"),
    JobKind("preprocess", ("mclrec", "preprocess", "{dataset}"),
            {name.replace(".", "_"): Output(paths.PROCESSED.replace("{name}", name),
                                        "metrics" if name == "stats.json" else "out")
             for name in paths.PROCESSED_FILES},
            ("mclrec.data.preprocess",), "preprocess/{dataset}"),
    JobKind("download_checkpoint", ("mclrec", "download", "{checkpoint}"),
            {"checkpoint": Output(paths.PUBLISHED)}, ("mclrec.data.download",), "download/published/{checkpoint}/{filename}"),
    JobKind("evaluate_published", ("mclrec", "evaluate", "--dataset", "{dataset}", "--published", "{checkpoint}",
                                   "{threads}"),
            {"results": Output(paths.RESULT.replace("{result}", "{checkpoint}")),
             "metrics": Output(paths.RESULT_METRICS.replace("{result}", "{checkpoint}"), "metrics"),
             "ranks": Output(paths.RESULT_RANKS.replace("{result}", "{checkpoint}"))},
            ("mclrec.evaluation.evaluate",), "evaluate/{dataset}/{checkpoint}"),
    JobKind("train", ("mclrec", "train", "--dataset", "{dataset}", "{args}", "--seed", "{seed}",
                      "--out", paths.RUN_DIR, "{threads}", "--resume-if-compatible", "--no-progress"),
            {"best": Output(f"{paths.RUN_DIR}/{paths.RUN_BEST}"),
             "summary": Output(f"{paths.RUN_DIR}/{paths.RUN_SUMMARY}"),
             "log": Output(f"{paths.RUN_DIR}/{paths.RUN_LOG}"),
             "curves": Output(f"{paths.RUN_DIR}/{paths.RUN_CURVES}", "plot", {"x": "epoch"})},
            ("mclrec.training.trainer", "mclrec.config", "mclrec.data.processed", "mclrec.device", "mclrec.gpu_slots"),
            "train/{dataset}/{run}/seed{seed}"),
    JobKind("evaluate", ("mclrec", "evaluate", "--dataset", "{dataset}", "--variant", "{variant}",
                         "--checkpoint", "{checkpoint}", "--output", paths.RESULT, "{threads}"),
            {"results": Output(paths.RESULT), "metrics": Output(paths.RESULT_METRICS, "metrics"),
             "ranks": Output(paths.RESULT_RANKS)},
            ("mclrec.evaluation.evaluate", "mclrec.config", "mclrec.data.processed", "mclrec.provenance"),
            "evaluate/{dataset}/{result}"),
    JobKind("aggregate", ("mclrec", "report", "aggregate", paths.SEED_RESULTS, paths.AGGREGATE),
            {"json": Output(paths.AGGREGATE), "metrics": Output(paths.AGGREGATE_METRICS, "metrics"),
             "ranks": Output(paths.AGGREGATE_RANKS)},
            ("mclrec.report.aggregate",), "aggregate/{dataset}/{run}"),
    JobKind("table", ("mclrec", "report", "table", "{number}"),
            {"md": Output("results/tables/table{number}.md"), "csv": Output("results/tables/table{number}.csv")},
            ("mclrec.report.tables", "mclrec.report.aggregate"), "report/table{number}"),
    JobKind("figure", ("mclrec", "report", "figure", "{figure}"),
            {"png": Output("results/figures/{figure}.png", "plot")}, ("mclrec.report.figures",), "report/{figure}"),
    JobKind("dataset_figure", ("mclrec", "report", "figure", "{kind}-{dataset}"),
            {"png": Output("results/figures/{kind}-{dataset}.png", "plot")}, ("mclrec.report.figures",),
            "report/{kind}-{dataset}"),
    JobKind("tsne", ("mclrec", "report", "tsne", "{view}", "{dataset}"),
            {"png": Output("results/figures/tsne-{view}-{dataset}.png", "plot")}, ("mclrec.report.tsne",),
            "report/tsne-{view}-{dataset}"),
    JobKind("curves", ("mclrec", "report", "curves", "{dataset}", "{variant}"),
            {"png": Output("results/figures/curves/{dataset}/{variant}.png", "plot")}, ("mclrec.report.figures",),
            "report/curves/{dataset}/{variant}"),
    JobKind("report", ("mclrec", "report", "render"),
            {"md": Output("results/report.md")}, ("mclrec.report.report",), "report/report"),
)}


# ---------------------------------------------------------------------------------------------- code dependencies

def _module_file(module: str, package: Path = PACKAGE) -> Path | None:
    """The source file of an mclrec module (a package's __init__.py), or None when it is not one."""
    parts = module.split(".")
    if parts[0] != "mclrec":
        return None
    base = package.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, module: str) -> set[str]:
    """The mclrec modules a source file imports anywhere in it (function-level imports included)."""
    package_parts = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package_parts[:len(package_parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "mclrec" or name.startswith("mclrec.")}


@lru_cache(maxsize=None)
def code_files(entries: tuple[str, ...], package: Path = PACKAGE) -> tuple[str, ...]:
    """The package files a job runs: the entry modules, everything they import from mclrec (transitively, with
    each package's __init__.py) and the params schema (its defaults are settings). Paths are relative to the
    project root (src/mclrec/...), sorted."""
    todo, seen = list(entries), set()
    files: set[Path] = {package / PARAMS_SCHEMA}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        for i in range(1, len(parts)):  # importing a.b.c runs a/__init__.py and a/b/__init__.py
            init = _module_file(".".join(parts[:i]), package)
            if init is not None and init.name == "__init__.py":
                files.add(init)
        path = _module_file(module, package)
        if path is None:
            continue
        files.add(path)
        todo.extend(_imports(path, module) - seen)
    return tuple(sorted(str(SOURCE_ROOT / f.relative_to(package)) for f in files))


# ---------------------------------------------------------------------------------------------- the jobs

@dataclass(frozen=True)
class Run:
    """One training: models/<dataset>/<run>/seed<seed>, with the settings of `variant` plus `sets` (--set)."""

    dataset: str
    run: str
    variant: str
    seed: int
    sets: tuple[tuple[str, Any], ...] = ()

    @property
    def key(self) -> str:
        """Its DVC stage key (train@<key>)."""
        return f"{self.dataset}-{self.run.replace('/', '-')}-{self.seed}"

    @property
    def folder(self) -> str:
        return paths.RUN_DIR.format(dataset=self.dataset, run=self.run, seed=self.seed)

    @property
    def args(self) -> str:
        """The train command's variant and override arguments."""
        return " ".join([f"--variant {self.variant}"] + [f"--set {k}={v}" for k, v in self.sets])


def parse_grid_run(run: str) -> tuple[str, str] | None:
    """(lambda, beta) of a grid run name grid/l<lambda>-b<beta>, or None for a variant name."""
    found = re.fullmatch(r"grid/l([0-9.]+)-b([0-9.]+)", run)
    return (found.group(1), found.group(2)) if found else None


def run_of(dataset: str, run: str, seed: int) -> Run:
    """The training behind a run name: a variant, or a grid cell (mclrec with lambda_cl1 and beta set)."""
    cell = parse_grid_run(run)
    if cell:
        return Run(dataset, run, "mclrec", seed, (("lambda_cl1", cell[0]), ("beta", cell[1])))
    return Run(dataset, run, run, seed)


def study_runs(params: Mapping) -> list[tuple[str, str]]:
    """(dataset, run) of every study run: every variant on the study datasets, the robustness variants on the
    length groups, and the lambda x beta grid of mclrec."""
    study = params["study"]
    pairs = [(d, v) for d in study["datasets"] for v in params["variants"]]
    pairs += [(d, v) for d in study["length_groups"] for v in study["robustness"]]
    if "mclrec" in params["variants"]:
        pairs += [(d, paths.grid_run(lam, beta)) for d in study["datasets"]
                  for lam in study["grid"]["lambdas"] for beta in study["grid"]["betas"]]
    return pairs


def single_results(params: Mapping) -> list[tuple[str, str]]:
    """(dataset, variant) of every single-run result dvc.yaml declares: every variant on every dataset that is not
    a length group (those belong to the study). Each evaluates the run of seed train.seed."""
    return [(d, v) for d, spec in params["datasets"].items() if "group_of" not in spec for v in params["variants"]]


def runs(params: Mapping) -> list[Run]:
    """Every training the workflows declare, each once."""
    seed = params["train"]["seed"]
    wanted = [run_of(d, r, k) for d, r in study_runs(params) for k in params["study"]["seeds"]]
    wanted += [run_of(d, v, seed) for d, v in single_results(params)]
    unique: dict[str, Run] = {}
    for run in wanted:
        unique.setdefault(run.folder, run)
    return list(unique.values())


@dataclass(frozen=True)
class Evaluation:
    """One results JSON: `result` is <run>/seed<k> or a single-run name; it scores `train`'s best.pt."""

    result: str
    train: Run

    @property
    def key(self) -> str:
        return f"{self.train.dataset}-{self.result.replace('/', '-')}"


def evaluation_of(dataset: str, result: str, default_seed: int) -> Evaluation:
    """The evaluation behind a result name: <run>/seed<k>, or a single run (seed `default_seed`)."""
    found = re.fullmatch(r"(.+)/seed([0-9]+)", result)
    run, seed = (found.group(1), int(found.group(2))) if found else (result, default_seed)
    return Evaluation(result, run_of(dataset, run, seed))


def evaluations(params: Mapping) -> list[Evaluation]:
    """Every results JSON the workflows declare: each study seed, then each single run."""
    found = [Evaluation(paths.seed_result(r, k), run_of(d, r, k)) for d, r in study_runs(params)
             for k in params["study"]["seeds"]]
    found += [evaluation_of(d, v, params["train"]["seed"]) for d, v in single_results(params)]
    return found


def tracked_dataset_key(params: Mapping, dataset: str, variant: str) -> str:
    """The one key of datasets.<dataset> a training reads: its model overrides, else (when the dataset has none)
    preprocess.max_len. DVC cannot track a key that is absent, so the choice is made here."""
    model = params["variants"][variant]["model"]
    if model in (params["datasets"][dataset].get("overrides") or {}):
        return f"datasets.{dataset}.overrides.{model}"
    return f"datasets.{dataset}.preprocess.max_len"


# ---------------------------------------------------------------------------------------------- rendering

def snakemake_outputs(kind: str) -> dict[str, str]:
    """A rule's named outputs."""
    return {name: out.pattern for name, out in KINDS[kind].outputs.items()}


def snakemake_command(kind: str) -> str:
    """A rule's shell command: wildcards as {wildcards.x}, other fields as {params.x}, threads as --threads."""
    job = KINDS[kind]
    wildcards = set(job.wildcards())

    def field_of(match: re.Match) -> str:
        name = match.group(1)
        if name == "threads":
            return "--threads {threads}"
        return "{wildcards.%s}" % name if name in wildcards else "{params.%s}" % name

    line = " ".join(re.sub(r"{(\w+)}", field_of, part) for part in job.command)
    return f"{line} 2> {{log}}"


def snakemake_log(kind: str) -> str:
    """A rule's log file."""
    return paths.LOG.format(name=KINDS[kind].log)


def dvc_command(kind: str, values: Mapping[str, Any]) -> str:
    """A stage's command with `values` filled in (those a foreach item carries as ${item.x})."""
    job = KINDS[kind]
    parts = []
    for part in job.command:
        if part == "{threads}":
            continue  # DVC runs: a training takes train.num_threads from params.yaml, an evaluation torch's default
        parts.append(re.sub(r"{(\w+)}", lambda m: str(values[m.group(1)]), part))
    return " ".join(parts)
