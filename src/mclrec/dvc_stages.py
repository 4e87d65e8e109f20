"""dvc.yaml, written from the workflow declarations (mclrec.pipeline) and params.yaml: `mclrec workflow dvc`.

Each job kind is one stage family: a `foreach` over the jobs params.yaml declares (keyed as `train@beauty-mclrec-0`)
and one `do` template, whose command, outputs and code dependencies come from mclrec.pipeline, the same place the
Snakefile's rules take theirs from. The jobs are listed, not computed by DVC, because a training is shared by the
single-run result and a study seed (each trained once), which DVC's cartesian `matrix` cannot express; so
dvc.yaml is rewritten when params.yaml adds or removes datasets, variants, seeds or checkpoints, and
`mclrec workflow dvc --check` (run in CI) says when it is stale.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping

import yaml

from mclrec import config, pipeline
from mclrec.pipeline import KINDS
from mclrec.paths import PROCESSED_FILES

HEADER = """\
# Written by `mclrec workflow dvc` from src/mclrec/pipeline.py (the job kinds the Snakefile's rules use too) and
# params.yaml; do not edit by hand. `mclrec workflow dvc --check` fails when this file is stale, e.g. after
# params.yaml gains a dataset, variant, seed or checkpoint: then run `mclrec workflow dvc`.
# Stages: <kind>@<key>, e.g. `dvc repro evaluate@synthetic-mclrec` (the single run: trains models/synthetic/mclrec/
# seed0 and evaluates it) or `dvc repro report` (the paper study). Each stage depends on the package code it runs
# and on the params keys it reads; evaluation settings (`evaluate`) never retrain.
"""


def _item_fields(kind: str) -> dict[str, str]:
    """Every field of a kind's command and outputs as its ${item.x} reference."""
    return {name: "${item.%s}" % name for name in KINDS[kind].fields()}


def _outputs(kind: str, y_metric: str | None = None) -> dict[str, list]:
    """A stage's outs, metrics and plots from its declared outputs."""
    refs = _item_fields(kind)
    sections: dict[str, list] = {}
    for out in KINDS[kind].outputs.values():
        path = out.pattern.format(**refs)
        if out.kind == "plot" and out.plot:
            sections.setdefault("plots", []).append({path: {**out.plot, **({"y": y_metric} if y_metric else {})}})
        else:
            sections.setdefault({"out": "outs", "metrics": "metrics", "plot": "plots"}[out.kind], []).append(path)
    return sections


def _processed(dataset_ref: str = "${item.dataset}", names=PROCESSED_FILES) -> list[str]:
    return [f"data/processed/{dataset_ref}/{name}" for name in names]


def _code(kind: str) -> list[str]:
    return list(pipeline.code_files(KINDS[kind].code))


def _stage(kind: str, items: Mapping[str, Mapping[str, Any]], deps: list[str], params: list[str],
           y_metric: str | None = None) -> dict:
    """A foreach stage family (or a plain stage when `items` is empty and the kind has no fields)."""
    body: dict[str, Any] = {"cmd": pipeline.dvc_command(kind, _item_fields(kind))}
    if deps:
        body["deps"] = deps
    if params:
        body["params"] = params
    body.update(_outputs(kind, y_metric))
    if not _item_fields(kind):
        return body
    return {"foreach": {key: dict(value) for key, value in items.items()}, "do": body}


def _present(raw: Mapping, dotted: str) -> bool:
    """Whether params.yaml itself (defaults not filled in) has the key: DVC fails on a tracked key that is absent."""
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def stages(params: Mapping, raw: Mapping) -> dict[str, dict]:
    """Every stage family, from validated `params` (defaults filled) and the `raw` params.yaml (what DVC reads)."""
    study = params["study"]
    present = [key for key in ("evaluate", "study.seeds", "study.datasets", "study.noise") if _present(raw, key)]
    seeds_param = ["study.seeds"] if "study.seeds" in present else []
    out: dict[str, dict] = {}
    datasets = {d: {"dataset": d, "filename": spec["filename"], "raw": config.raw_source(params, d)}
                for d, spec in params["datasets"].items()}
    fetched = {d: {k: v for k, v in item.items() if k != "raw"} for d, item in datasets.items() if item["raw"] == d}
    out["download"] = _stage("download", fetched, [], ["datasets.${item.dataset}.source",
                                                       "datasets.${item.dataset}.filename"])
    out["preprocess"] = _stage("preprocess", datasets, ["data/raw/${item.raw}/${item.filename}", *_code("preprocess")],
                               ["datasets.${item.dataset}.format", "datasets.${item.dataset}.preprocess"])
    checkpoints = params.get("checkpoints", {})
    if checkpoints:
        items = {name: {"checkpoint": name, "dataset": spec["dataset"], "filename": spec["filename"]}
                 for name, spec in checkpoints.items()}
        out["download_checkpoint"] = _stage("download_checkpoint", items, [], [
            "checkpoints.${item.checkpoint}.url", "checkpoints.${item.checkpoint}.sha256",
            "checkpoints.${item.checkpoint}.filename"])
        out["evaluate_published"] = _stage(
            "evaluate_published", items,
            [*_processed(), "models/published/${item.checkpoint}/${item.filename}", *_code("evaluate_published")],
            [*(["evaluate"] if "evaluate" in present else []), "checkpoints.${item.checkpoint}"])
    runs = {run.key: {"dataset": run.dataset, "run": run.run, "seed": run.seed, "variant": run.variant,
                      "args": run.args, "tracked": pipeline.tracked_dataset_key(params, run.dataset, run.variant)}
            for run in pipeline.runs(params)}
    out["train"] = _stage("train", runs, [*_processed(), *_code("train")],
                          ["train", "variants.${item.variant}", "${item.tracked}"],
                          y_metric="${train.valid_metric}")
    evaluations = {e.key: {"dataset": e.train.dataset, "result": e.result, "variant": e.train.variant,
                           "checkpoint": f"{e.train.folder}/best.pt", "summary": f"{e.train.folder}/summary.json"}
                   for e in pipeline.evaluations(params)}
    out["evaluate"] = _stage("evaluate", evaluations,
                             [*_processed(), "${item.checkpoint}", "${item.summary}", *_code("evaluate")],
                             ["evaluate"] if "evaluate" in present else [])
    aggregates = {f"{d}-{r.replace('/', '-')}": {"dataset": d, "run": r} for d, r in pipeline.study_runs(params)}
    out["aggregate"] = _stage("aggregate", aggregates, ["results/${item.dataset}/${item.run}", *_code("aggregate")],
                              seeds_param)
    out["table"] = _stage("table", {str(n): {"number": n} for n in pipeline.TABLES},
                          ["results/aggregate", "results/reference", *_code("table")],
                          ["study.table${item.number}"] + (["study.datasets"] if "study.datasets" in present else []))
    figure_params = ["study"] if _present(raw, "study") else []
    figure_params += ["evaluate.noise"] if _present(raw, "evaluate.noise") else []
    out["figure"] = _stage("figure", {f: {"figure": f} for f in pipeline.FIGURES},
                           ["results/aggregate", *_code("figure")], figure_params)
    out["dataset_figure"] = _stage("dataset_figure", {f"{k}-{d}": {"kind": k, "dataset": d}
                                                      for k in pipeline.DATASET_FIGURES for d in study["datasets"]},
                                   ["results/aggregate", *_code("dataset_figure")], figure_params)
    views = {f"{view}-{d}": {"view": view, "dataset": d, "first": names[0], "second": names[1]}
             for view, names in pipeline.TSNE_VARIANTS.items() if set(names) <= set(params["variants"])
             for d in study["datasets"]}
    if views:
        # Reads the first seed's checkpoints; depends on their seed results, which exist only once those are trained.
        out["tsne"] = _stage("tsne", views, [*_processed(names=("test.parquet",)), "results/${item.dataset}/${item.first}",
                                             "results/${item.dataset}/${item.second}", *_code("tsne")], seeds_param)
    out["curves"] = _stage("curves", {f"{d}-{v}": {"dataset": d, "variant": v} for d in study["datasets"]
                                      for v in params["variants"]},
                           ["results/${item.dataset}/${item.variant}", *_code("curves")],
                           seeds_param + ["train.valid_metric"])
    out["report"] = _stage("report", {}, ["results/aggregate", "results/tables", "results/figures", *_code("report")],
                           (["study"] if _present(raw, "study") else []) + ["variants"])
    return out


class _Item(dict):
    """A foreach item, written on one line."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Item, lambda dumper, data: dumper.represent_mapping("tag:yaml.org,2002:map", data,
                                                                              flow_style=True))


def render(params: Mapping, raw: Mapping) -> str:
    """The text of dvc.yaml."""
    families = stages(params, raw)
    for family in families.values():
        if "foreach" in family:
            family["foreach"] = {key: _Item(value) for key, value in family["foreach"].items()}
    buffer = io.StringIO()
    yaml.dump({"stages": families}, buffer, Dumper=_Dumper, sort_keys=False, width=160, default_flow_style=False)
    return HEADER + buffer.getvalue()


def write(path: Path, text: str) -> None:
    """Replace `path` atomically."""
    from mclrec.io import atomic_open

    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
