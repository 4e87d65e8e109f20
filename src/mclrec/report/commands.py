"""`mclrec report ...`: seed aggregates, the paper's tables and figures, and the stitched report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from mclrec import config

report_app = typer.Typer(help="Aggregate seeds and render the paper's tables, figures and report.", no_args_is_help=True)

ParamsOpt = typer.Option(Path("params.yaml"), "--params", "-p", help="params.yaml to read.")
ResultsOpt = typer.Option(Path("results"), help="Results root.")
FIGURES = ("joint_vs_meta", "batch_sizes", "grid", "curves", "noise-<dataset>", "groups-<dataset>")


def _guard():
    from mclrec.cli import user_errors

    return user_errors()


@report_app.command()
def aggregate(
    output: Path = typer.Argument(..., help="Aggregate JSON to write."),
    seed_results: list[Path] = typer.Argument(..., help="Per-seed results JSONs."),
) -> None:
    """Mean, std and 95% interval over seeds, in the single-run schema (plus *_std, *_ci95)."""
    from mclrec.report.aggregate import write_aggregate

    with _guard():
        doc = write_aggregate(seed_results, output)
        typer.echo(f"{output}: {doc['n_seeds']} seeds", err=True)


@report_app.command()
def table(
    number: int = typer.Argument(..., help="3 (main comparison) or 4 (ablations)."),
    params: Path = ParamsOpt,
    results: Path = ResultsOpt,
    out: Path = typer.Option(Path("results/tables"), help="Folder for table<N>.md and .csv."),
) -> None:
    """Published vs our mean ± std and relative difference; Table 3 adds mclrec vs the best baseline with a paired test."""
    from mclrec.report import tables
    from mclrec.report.aggregate import SEED_AGGREGATE, load_index, load_ranks_index

    with _guard():
        study = config.load_params(params)["study"]
        if number not in (3, 4):
            raise config.ConfigError(f"table {number}: only tables 3 and 4 exist")
        variants = study[f"table{number}"]
        index = load_index(results, study["datasets"], variants, SEED_AGGREGATE)
        if number == 3:
            ranks = load_ranks_index(results, study["datasets"], variants, SEED_AGGREGATE)
            md, frame = tables.table3(index, study["datasets"], variants, ranks_index=ranks)
        else:
            md, frame = tables.table4(index, study["datasets"], variants)
        tables.write_table(md, frame, out / f"table{number}.md", out / f"table{number}.csv")


@report_app.command()
def figure(
    name: str = typer.Argument(..., help=f"One of: {', '.join(FIGURES)}."),
    params: Path = ParamsOpt,
    results: Path = ResultsOpt,
    models: Path = typer.Option(Path("models"), help="Models root (training logs for the curves)."),
    out: Path = typer.Option(Path("results/figures"), help="Folder for the PNGs."),
) -> None:
    """Render one of the paper's figures (Fig. 3, 4, 6, 7, 8) or the training curves from the study's results."""
    from mclrec.report import figures
    from mclrec.report.aggregate import SEED_AGGREGATE, load_index

    with _guard():
        study = config.load_params(params)["study"]
        datasets = study["datasets"]
        path = out / f"{name}.png"
        if name == "joint_vs_meta":
            index = load_index(results, datasets, study["joint_vs_meta"], SEED_AGGREGATE)
            figures.plot_joint_vs_meta(index, datasets, path, variants=study["joint_vs_meta"])
        elif name == "batch_sizes":
            by_batch = {int(b): v for b, v in study["batch_sizes"].items()}
            index = load_index(results, datasets, list(by_batch.values()), SEED_AGGREGATE)
            figures.plot_batch_sizes(index, datasets, {"MCLRec": by_batch}, path)
        elif name.split("-", 1)[0] in ("noise", "groups") and "-" in name:
            kind, dataset = name.split("-", 1)
            _robustness_figure(kind, dataset, study, results, path)
        elif name == "grid":
            _grid_figure(study, results, path)
        elif name == "curves":
            _curves_figure(study, models, path)
        else:
            raise config.ConfigError(f"unknown figure '{name}'; choose one of: {', '.join(FIGURES)}")


def _robustness_figure(kind: str, dataset: str, study: dict, results: Path, path: Path) -> None:
    """Fig. 7 (noise-<dataset>) or Fig. 8 (groups-<dataset>) for the study's robustness variants."""
    from mclrec.report import figures
    from mclrec.report.aggregate import SEED_AGGREGATE, load_index

    index = load_index(results, [dataset], study["robustness"], SEED_AGGREGATE)
    records = {v: index[(dataset, v)] for v in study["robustness"]}
    if kind == "noise":
        figures.plot_noise(records, [0.0, *study["noise"]], path, title=f"{dataset}: NDCG@20 vs test-time noise")
    else:
        figures.plot_groups(records, path, title=f"{dataset}: NDCG@20 by sequence length")


def _grid_figure(study: dict, results: Path, path: Path) -> None:
    """Fig. 6: the lambda x beta heat map of the first study dataset (all datasets: grid-<dataset>.png)."""
    from mclrec.report import figures

    grid = study["grid"]
    for i, dataset in enumerate(study["datasets"]):
        records = [json.loads(p.read_text()) for p in sorted((results / dataset / "grid").glob("*/aggregate.json"))]
        values = figures.grid_values(records, grid["lambdas"], grid["betas"], "NDCG@20")
        target = path if i == 0 else path.with_name(f"grid-{dataset}.png")
        figures.plot_grid(values, grid["lambdas"], grid["betas"], target, "NDCG@20", title=f"{dataset}: NDCG@20")


def _curves_figure(study: dict, models: Path, path: Path) -> None:
    """Training curves (loss components, validation MRR@10) of mclrec, seed 0, on the first study dataset."""
    from mclrec.report import figures

    dataset = study["datasets"][0]
    log = models / dataset / "mclrec" / "seed0" / "log.jsonl"
    if not log.is_file():
        figures.plot_no_runs(path, f"training curves: {log} not found")
        return
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    figures.plot_training_curves(records, f"{dataset} / mclrec / seed 0", path)


@report_app.command()
def render(
    params: Path = ParamsOpt,
    results: Path = ResultsOpt,
    output: Path = typer.Option(Path("results/report.md"), help="Report to write."),
    command: Optional[list[str]] = typer.Option(None, help="Commands to list in the report (repeatable)."),
) -> None:
    """Stitch tables and figures into results/report.md with the environment and the commands."""
    from mclrec.report.report import environment_info, figure_link, render_report, write_report

    with _guard():
        study = config.load_params(params)["study"]
        sections = []
        for number, title in ((3, "Table 3: overall comparison"), (4, "Table 4: ablations")):
            md = results / "tables" / f"table{number}.md"
            sections.append((title, md.read_text() if md.is_file() else f"`{md}` not built yet."))
        figs = [(f"figures/{name}.png", caption) for name, caption in (
            ("joint_vs_meta", "Fig. 3: joint vs meta"), ("batch_sizes", "Fig. 4: batch size"),
            ("grid", "Fig. 6: lambda x beta"), ("curves", "Training curves"))]
        figs += [(f"figures/{kind}-{d}.png", f"Fig. {7 if kind == 'noise' else 8}: {kind}, {d}")
                 for kind in ("noise", "groups") for d in study["datasets"]]
        links = [figure_link(results / rel, output, caption) for rel, caption in figs if (results / rel).is_file()]
        sections.append(("Figures", "\n\n".join(links) or "No figures built yet."))
        sections.append(("Notes", "Fig. 8 here evaluates one model per run on each user group (the paper trained "
                                  "one model per group). Seeds per run: " + str(study["seeds"]) + "."))
        commands = command or ["snakemake --cores all results/report.md"]
        write_report(render_report(sections, environment_info(), commands), output)

