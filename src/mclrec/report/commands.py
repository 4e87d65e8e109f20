"""`mclrec report ...`: the study's seed aggregates, the paper's tables and figures, curves, report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from mclrec import config, paths
from mclrec.cli_common import ParamsOpt, err_console, user_errors

report_app = typer.Typer(help="The paper study: seed aggregates, tables, figures, curves, report.",
                         no_args_is_help=True)

ResultsOpt = typer.Option(Path("results"), help="Results root.")
FIGURES = {"joint_vs_meta": "Fig. 3", "batch_sizes": "Fig. 4", "grid-<dataset>": "Fig. 6", "noise-<dataset>": "Fig. 7",
           "groups_trained": "Fig. 8", "groups-<dataset>": "Fig. 8, one model scored per group"}
FIGURE_CHOICES = ", ".join(f"{name} ({paper})" for name, paper in FIGURES.items())
DATASET_FIGURES = {"grid": "Fig. 6: lambda x beta", "noise": "Fig. 7: test-time noise",
                   "groups": "Fig. 8 (one model scored per length group)"}
COMMANDS = ["snakemake --cores all results/report.md", "snakemake --report results/report.html results/report.md"]
ModelsOpt = typer.Option(Path("models"), help="Models root (run folders and training logs).")


def _guard():
    return user_errors()


def seed_run_paths(dataset: str, variant: str, seed: int, results: Path, models: Path) -> tuple[Path, Path]:
    """The checkpoint and the results JSON of seed `seed` of a study run. Seed 0 without a seed0.json is the single
    run's results/<d>/<v>.json (`snakemake results/<d>/<v>.json` trains seed 0 into the same run folder)."""
    from mclrec.errors import MclrecError

    results_file = paths.result_file(dataset, paths.seed_result(variant, seed), results)
    if seed == 0 and not results_file.is_file():
        single = paths.result_file(dataset, variant, results)
        if not single.is_file():
            raise MclrecError(f"neither {results_file} nor {single} exists: evaluate seed 0 of {dataset}/{variant} "
                              "first (snakemake results/<dataset>/<variant>.json)")
        results_file = single
    return paths.run_dir(dataset, variant, seed, models) / paths.RUN_BEST, results_file


@report_app.command()
def aggregate(
    run_dir: Path = typer.Argument(..., help="Folder of the per-seed results (results/<dataset>/<variant>)."),
    output: Path = typer.Argument(..., help="Aggregate JSON to write (its stacked ranks go beside it)."),
    params: Path = ParamsOpt,
) -> None:
    """Mean, std and 95% interval over <run_dir>/seed<k>.json, k in study.seeds (single-run schema + *_std, *_ci95)."""
    from mclrec.report.aggregate import seed_paths, write_aggregate

    with _guard():
        seeds = seed_paths(run_dir, config.load_params(params)["study"]["seeds"])
        missing = [str(p) for p in seeds if not p.is_file()]
        if missing:
            raise config.ConfigError(f"study.seeds: no results yet for {', '.join(missing)}")
        doc = write_aggregate(seeds, output)
        typer.echo(f"{output}: {doc['n_seeds']} seeds", err=True)


@report_app.command()
def table(
    number: int = typer.Argument(..., help="3 (main comparison) or 4 (ablations)."),
    params: Path = ParamsOpt,
    results: Path = ResultsOpt,
    out: Path = typer.Option(Path("results/tables"), help="Folder for table<N>.md and .csv."),
    reference: Path = typer.Option(Path("results/reference"),
                                   help="Committed reference runs (<dataset>/<variant>.json), shown under Table 3."),
) -> None:
    """Published vs our mean ± std and relative difference; Table 3 adds mclrec vs the strongest same-protocol
    baseline with a paired test, and the committed reference runs beside the published cells."""
    from mclrec.report import tables
    from mclrec.report.aggregate import SEED_AGGREGATE, load_index, load_ranks_index
    from mclrec.report.reference import seed_aggregates

    with _guard():
        study = config.load_params(params)["study"]
        if number not in (3, 4):
            raise config.ConfigError(f"table {number}: only tables 3 and 4 exist")
        variants = study[f"table{number}"]
        index = load_index(results, study["datasets"], variants, SEED_AGGREGATE)
        if number == 3:
            ranks = load_ranks_index(results, study["datasets"], variants, SEED_AGGREGATE)
            md, frame = tables.table3(index, study["datasets"], variants, ranks_index=ranks)
            references = load_index(reference, study["datasets"], variants)
            spreads = {(d, v): doc for d in study["datasets"]
                       for v, doc in seed_aggregates(reference / d, variants).items()}
            md += "\n" + tables.reference_table(references, study["datasets"], variants, seed_index=spreads)
        else:
            md, frame = tables.table4(index, study["datasets"], variants)
        tables.write_table(md, frame, out / f"table{number}.md", out / f"table{number}.csv")


@report_app.command()
def figure(
    name: str = typer.Argument(..., help=f"One of: {FIGURE_CHOICES}."),
    params: Path = ParamsOpt,
    results: Path = ResultsOpt,
    out: Path = typer.Option(Path("results/figures"), help="Folder for the PNGs."),
) -> None:
    """Render one of the paper's figures (Fig. 3, 4, 6, 7, 8) from the study's seed aggregates."""
    from mclrec.report import figures
    from mclrec.report.aggregate import SEED_AGGREGATE, load_index

    with _guard():
        params_dict = config.load_params(params)
        study = {**params_dict["study"], "noise": params_dict["evaluate"]["noise"]}
        datasets = study["datasets"]
        path = out / f"{name}.png"
        if name == "joint_vs_meta":
            index = load_index(results, datasets, study["joint_vs_meta"], SEED_AGGREGATE)
            figures.plot_joint_vs_meta(index, datasets, path, variants=study["joint_vs_meta"])
        elif name == "groups_trained":
            _groups_trained_figure(params_dict, results, path)
        elif name == "batch_sizes":
            by_batch = {int(b): v for b, v in study["batch_sizes"].items()}
            index = load_index(results, datasets, list(by_batch.values()), SEED_AGGREGATE)
            figures.plot_batch_sizes(index, datasets, {"MCLRec": by_batch}, path)
        elif name.split("-", 1)[0] in ("noise", "groups") and "-" in name:
            kind, dataset = name.split("-", 1)
            config.dataset_spec(params_dict, dataset)  # a mistyped dataset is an error, not an empty figure
            _robustness_figure(kind, dataset, study, results, path)
        elif name.startswith("grid-"):
            config.dataset_spec(params_dict, name.split("-", 1)[1])
            _grid_figure(name.split("-", 1)[1], study, results, path)
        else:
            raise config.ConfigError(f"unknown figure '{name}'; choose one of: {FIGURE_CHOICES}")


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


def _groups_trained_figure(params: dict, results: Path, path: Path) -> None:
    """Fig. 8 as the paper ran it: the robustness variants trained on each study.length_groups dataset."""
    from mclrec.report import figures
    from mclrec.report.aggregate import SEED_AGGREGATE, load_index

    study = params["study"]
    by_parent: dict[str, list[str]] = {}
    for group in study["length_groups"]:
        by_parent.setdefault(params["datasets"][group]["group_of"], []).append(group)
    index = load_index(results, study["length_groups"], study["robustness"], SEED_AGGREGATE)
    figures.plot_groups_trained(index, by_parent, study["robustness"], path)


TSNE_FIGURES = {  # figure kind -> (views, title, {panel label: variant})
    "z": ("z", "Fig. 2: model-augmented views z1, z2 (t-SNE)", {"MCLRec (with R)": "mclrec", "without R": "mclrec-no-reg"}),
    "h": ("h", "Fig. 5: data-augmented views h1, h2 (t-SNE)", {"MCLRec (meta)": "mclrec", "MCLRec-J (joint)": "mclrec-j"}),
}


@report_app.command()
def tsne(
    kind: str = typer.Argument(..., help="z (Fig. 2: z1/z2 with and without R) or h (Fig. 5: h1/h2, meta vs joint)."),
    dataset: str = typer.Argument(..., help="Dataset name."),
    params: Path = ParamsOpt,
    models: Path = ModelsOpt,
    out: Path = typer.Option(Path("results/figures"), help="Folder for tsne-<kind>-<dataset>.png."),
    users: int = typer.Option(60, help="Test users sampled (the same for every model)."),
    seed: int = typer.Option(0, help="Seed of the user sample, the augmentations and t-SNE."),
) -> None:
    """t-SNE maps of the learned views from the first study seed's checkpoints (Figs. 2 and 5)."""
    from mclrec.data.processed import load_processed
    from mclrec.report import tsne as tsne_maps

    with _guard():
        if kind not in TSNE_FIGURES:
            raise config.ConfigError(f"t-SNE figure '{kind}': choose z (Fig. 2) or h (Fig. 5)")
        study = config.load_params(params)["study"]
        views, title, variants = TSNE_FIGURES[kind]
        data = load_processed(paths.processed_dir(dataset))
        rows = tsne_maps.sample_users(data.n_users, users, seed)
        panels = {}
        for label, variant in variants.items():
            checkpoint = paths.run_dir(dataset, variant, study["seeds"][0], models) / paths.RUN_BEST
            panels[label] = tsne_maps.view_embeddings(checkpoint, data, rows, seed) if checkpoint.is_file() else None
        tsne_maps.plot_tsne(panels, views, out / f"tsne-{kind}-{dataset}.png", f"{dataset}: {title}", seed)


def _grid_figure(dataset: str, study: dict, results: Path, path: Path) -> None:
    """Fig. 6: the lambda x beta heat map of `dataset` from its grid aggregates."""
    from mclrec.report import figures

    grid = study["grid"]
    records = [json.loads(p.read_text()) for p in sorted((results / "aggregate" / dataset / "grid").glob("*.json"))
               if not p.name.endswith(".metrics.json")]
    values = figures.grid_values(records, grid["lambdas"], grid["betas"], "NDCG@20")
    figures.plot_grid(values, grid["lambdas"], grid["betas"], path, "NDCG@20", title=f"{dataset}: NDCG@20")


@report_app.command()
def reference(
    dataset: str = typer.Argument(..., help="Dataset name."),
    variant: str = typer.Argument(..., help="Variant name."),
    seed: int = typer.Option(0, help="The study seed run to add (results/<d>/<v>/seed<k>.json, "
                                     "models/<d>/<v>/seed<k>/; seed 0 also as the single run results/<d>/<v>.json)."),
    results: Path = ResultsOpt,
    models: Path = ModelsOpt,
    out: Path = typer.Option(Path("results/reference"), help="Reference root (committed to git)."),
    params: Path = ParamsOpt,
) -> None:
    """Add a finished seed run to the committed reference runs (results JSON, log.jsonl, summary.json, RUNS.md)."""
    from mclrec.report.reference import add_reference, reference_paths

    with _guard():
        params_dict = config.load_params(params)
        checkpoint, results_file = seed_run_paths(dataset, variant, seed, results, models)
        dest = add_reference(dataset, variant, results_file, checkpoint.parent, out, params_dict)
        run_folder = reference_paths(out / dataset, variant, seed)[1]
        err_console.print(f"{dest} (and {run_folder}/, {out / dataset / 'RUNS.md'})")


def read_log(path: Path) -> list[dict]:
    """The epoch records of a training log (log.jsonl); [] when the file is missing."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_best_epoch(path: Path) -> int | None:
    """The best epoch a finished training chose (summary.json's best_epoch); None while it has no summary."""
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get("best_epoch")


@report_app.command()
def curves(
    dataset: str = typer.Argument(..., help="Dataset name."),
    variant: str = typer.Argument(..., help="Variant name."),
    params: Path = ParamsOpt,
    models: Path = ModelsOpt,
    reference: Optional[Path] = typer.Option(None, help="Read the committed reference runs under this root "
                                             "(results/reference) instead of the study's runs under --models."),
    out: Path = typer.Option(Path("results/figures/curves"), help="Folder for <dataset>/<variant>.png."),
) -> None:
    """Training curves of a study run: each loss component and validation `train.valid_metric` by epoch, the seeds
    overlaid."""
    from mclrec.report import figures
    from mclrec.report.reference import reference_paths

    with _guard():
        params_dict = config.load_params(params)
        config.dataset_spec(params_dict, dataset)  # a mistyped name is an error, not a "no runs yet" figure
        config.variant_spec(params_dict, variant)
        seeds = params_dict["study"]["seeds"]
        if reference is None:
            folders = {k: paths.run_dir(dataset, variant, k, models) for k in seeds}
        else:
            folders = {k: reference_paths(reference / dataset, variant, k)[1] for k in seeds}
        runs = {f"seed {k}": read_log(folder / paths.RUN_LOG) for k, folder in folders.items()}
        best = {f"seed {k}": read_best_epoch(folder / paths.RUN_SUMMARY) for k, folder in folders.items()}
        if not any(runs.values()):
            where = ", ".join(str(folder / paths.RUN_LOG) for folder in folders.values())
            err_console.print(f"warning: no training log of {dataset}/{variant} (looked for {where}); the figure says "
                              "'no runs yet'")
        figures.plot_training_curves(runs, f"{dataset} / {variant}: training curves", out / dataset / f"{variant}.png",
                                     metric=params_dict["train"]["valid_metric"], best=best)


@report_app.command()
def render(
    params: Path = ParamsOpt,
    results: Path = ResultsOpt,
    output: Path = typer.Option(Path("results/report.md"), help="Report to write."),
    command: Optional[list[str]] = typer.Option(None, help="Commands to list in the report (repeatable)."),
) -> None:
    """Stitch tables and figures into results/report.md with the environment and the commands."""
    from mclrec.report.report import environment_info, render_report, write_report

    with _guard():
        params_dict = config.load_params(params)
        study, datasets = params_dict["study"], params_dict["study"]["datasets"]
        sections = []
        for number, title in ((3, "Table 3: overall comparison"), (4, "Table 4: ablations")):
            md = results / "tables" / f"table{number}.md"
            sections.append((title, md.read_text() if md.is_file() else f"`{md}` not built yet."))
        figs = [("figures/joint_vs_meta.png", "Fig. 3: joint vs meta"),
                ("figures/batch_sizes.png", "Fig. 4: batch size"),
                ("figures/groups_trained.png", "Fig. 8 as the paper ran it (models trained per length group)")]
        figs += [(f"figures/{kind}-{d}.png", f"{title}, {d}")
                 for kind, title in DATASET_FIGURES.items() for d in datasets]
        figs += [(f"figures/tsne-{kind}-{d}.png", f"{spec[1]}, {d}") for kind, spec in TSNE_FIGURES.items() for d in datasets]
        sections.append(("Figures", _figure_links(figs, results, output) or "No figures built yet."))
        runs = [(f"figures/curves/{d}/{v}.png", f"{d} / {v}") for d in datasets for v in params_dict["variants"]]
        sections.append(("Training curves", _figure_links(runs, results, output) or "No training curves built yet."))
        seeds = study["seeds"]
        sections.append(("Notes", "Fig. 8 comes twice: groups-<dataset> scores one model per run on each user group, "
                                  "groups_trained trains one model per group, as the paper did. Seeds per run: "
                                  f"{len(seeds)} ({', '.join(map(str, seeds))})."))
        commands = command or COMMANDS
        write_report(render_report(sections, environment_info(), commands), output)


def _figure_links(figures: list[tuple[str, str]], results: Path, output: Path) -> str:
    """Markdown images (relative to the report) of the (path under results, caption) entries that exist."""
    from mclrec.report.report import figure_link

    existing = [(rel, caption) for rel, caption in figures if (results / rel).is_file()]
    return "\n\n".join(figure_link(results / rel, output, caption) for rel, caption in existing)
