"""params.yaml: loading, schema validation with file/line/key errors, and run-setting resolution."""

from __future__ import annotations

import copy
import difflib
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Hashable

import jsonschema
import yaml

from mclrec.errors import ConfigError
from mclrec.run_config import RunConfig

SCHEMA_PATH = Path(__file__).with_name("params.schema.yaml")


class ParamsLoader(yaml.SafeLoader):
    """YAML loader that also reads 1e-4, 1E3 and 5e+2 as numbers (YAML 1.2, as DVC reads params.yaml), and refuses
    a key given twice in one mapping.

    PyYAML follows YAML 1.1, where a float needs a dot, so `lr: 1e-4` would be the string '1e-4'; and it keeps the
    last of two equal keys, so an edit above an existing `lr:` line would be ignored without a word. Keys that a
    merge (`<<: *anchor`) brings in may still be overridden: that is what merging is for.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in first_line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given on line {first_line[key]})", key_node.start_mark)
            if isinstance(key, Hashable):
                first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(text: str):
    """Parse YAML text with ParamsLoader."""
    return yaml.load(text, Loader=ParamsLoader)  # noqa: S506 - a SafeLoader subclass


# settings that turn every speed-up off (reference path)
NAIVE_PATH = {"length_buckets": [], "batch_views": False, "packed_tokens": False, "dropout_draws": "uniform",
              "fused_losses": False, "adam": "foreach"}


@lru_cache(maxsize=1)
def load_schema() -> dict:
    """The params schema as a dict."""
    with open(SCHEMA_PATH, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def settings_defaults() -> dict[str, Any]:
    """Default value of every run setting, from the schema."""
    props = load_schema()["$defs"]["settings"]["properties"]
    return {key: copy.deepcopy(spec["default"]) for key, spec in props.items()}


def section_defaults(section: str) -> dict[str, Any]:
    """Default value of every setting of a top-level section (study, evaluate), from the schema."""
    props = load_schema()["properties"][section]["properties"]
    return {key: copy.deepcopy(spec["default"]) for key, spec in props.items()}


def study_defaults() -> dict[str, Any]:
    """Default value of every study setting, from the schema."""
    return section_defaults("study")


def _where(source: str, root: yaml.Node | None, path: list) -> str:
    """`source:line` of the key at `path` (its deepest existing ancestor's line), or `source` without a line."""
    line = _node_line(root, path)
    return f"{source}:{line}" if line else source


def _check_study(params: dict, source: str, root: yaml.Node | None = None) -> None:
    """Every dataset and variant the study section names must be defined."""
    study = params.get("study", {})

    def fail(path: list, message: str) -> ConfigError:  # the line of the list item, the key without its index
        key = ".".join(str(p) for p in path if not isinstance(p, int))
        return ConfigError(f"{_where(source, root, path)}: {key}: {message}")

    for i, name in enumerate(study.get("datasets", [])):
        if name not in params["datasets"]:
            raise fail(["study", "datasets", i], f"'{name}' is not in datasets")
    for i, name in enumerate(study.get("length_groups", [])):
        if name not in params["datasets"]:
            raise fail(["study", "length_groups", i], f"'{name}' is not in datasets")
        if "group_of" not in params["datasets"][name]:
            raise fail(["study", "length_groups", i], f"datasets.{name} has no group_of (the dataset it groups)")
    for name, spec in params["datasets"].items():
        if "group_of" in spec and spec["group_of"] not in params["datasets"]:
            raise fail(["datasets", name, "group_of"], f"'{spec['group_of']}' is not in datasets")
    named = [([k, i], v) for k in ("table3", "table4", "joint_vs_meta", "robustness")
             for i, v in enumerate(study.get(k, []))]
    named += [(["batch_sizes", size], v) for size, v in study.get("batch_sizes", {}).items()]
    for path, name in named:
        if name not in params["variants"]:
            raise fail(["study", *path], f"'{name}' is not in variants")


def _check_checkpoints(params: dict, source: str, root: yaml.Node | None = None) -> None:
    """A published checkpoint names a declared dataset, and its name is neither a dataset's nor a variant's."""
    for name, spec in params.get("checkpoints", {}).items():
        if spec["dataset"] not in params["datasets"]:
            raise ConfigError(f"{_where(source, root, ['checkpoints', name, 'dataset'])}: checkpoints.{name}.dataset: "
                              f"'{spec['dataset']}' is not in datasets")
        for section in ("datasets", "variants"):
            if name in params[section]:
                raise ConfigError(f"{_where(source, root, ['checkpoints', name])}: checkpoints.{name}: the name is "
                                  f"also one of {section}; pick another")


def _node_line(root: yaml.Node | None, path: list) -> int | None:
    """1-based line of the YAML node at `path` (or of its deepest existing ancestor)."""
    node, line = root, (root.start_mark.line + 1 if root is not None else None)
    for key in path:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == str(key)]
            if not match:
                break
            key_node, node = match[0]
            line = key_node.start_mark.line + 1  # the key's line: a nested mapping's value starts on the next one
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line


# RecBole's config keys for settings named otherwise here (RecBole users type these first)
RECBOLE_NAMES = {"learning_rate": "lr", "train_batch_size": "batch_size", "epochs": "max_epochs",
                 "stopping_step": "patience", "hidden_dropout_prob": "hidden_dropout",
                 "attn_dropout_prob": "attn_dropout"}


def _describe(error: jsonschema.ValidationError) -> tuple[list, str]:
    """Key path and a readable message for one schema error."""
    path = list(error.absolute_path)
    if error.validator in ("additionalProperties", "unevaluatedProperties") and isinstance(error.instance, dict):
        allowed = sorted(_allowed_keys(error.schema))
        unknown = [k for k in error.instance if k not in allowed]
        if unknown:
            key = unknown[0]
            hint = difflib.get_close_matches(key, allowed, n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            if RECBOLE_NAMES.get(key) in allowed:
                suggestion = f" (RecBole's name for '{RECBOLE_NAMES[key]}')"
            return path + [key], f"unknown key '{key}'{suggestion}; allowed: {', '.join(allowed)}"
    if "propertyNames" in error.schema_path and isinstance(error.instance, str):  # a key, not a value, is wrong
        rule = error.schema.get("description") or error.message
        return path + [error.instance], f"'{error.instance}' is not an allowed name: {rule}"
    if error.validator == "oneOf" and error.context:
        branches = error.schema["oneOf"]
        present = set(error.instance) if isinstance(error.instance, dict) else set()
        fitting = [i for i, b in enumerate(branches) if set(b.get("required", ["\0"])) <= present]
        if len(fitting) == 1:
            sub = [e for e in error.context if e.schema_path and e.schema_path[0] == fitting[0]]
            if sub:
                return _describe(sub[0])
        forms = " | ".join("+".join(b["required"]) for b in branches if "required" in b)
        if forms:
            return path, f"must have exactly one of the forms: {forms}"
    return path, error.message


def _allowed_keys(schema: dict) -> set[str]:
    """Property names a (possibly $ref-composed) object schema accepts."""
    keys = set(schema.get("properties", {}))
    ref = schema.get("$ref")
    if ref and ref.startswith("#/$defs/"):
        keys |= _allowed_keys(load_schema()["$defs"][ref.rsplit("/", 1)[1]])
    return keys


def validate_params(params: Any, source: str = "params.yaml", root: yaml.Node | None = None) -> None:
    """Raise ConfigError naming file, line and key for the first schema violation."""
    validator = jsonschema.Draft202012Validator(load_schema())
    # At one key, an unknown key comes first: a misspelt required key ('modle') is reported as itself
    # (with the spelling it resembles), not as the required key that is missing because of it.
    errors = sorted(
        validator.iter_errors(params),
        key=lambda e: (list(e.absolute_path), e.validator not in ("additionalProperties", "unevaluatedProperties")),
    )
    if not errors:
        return
    path, message = _describe(errors[0])
    line = _node_line(root, path)
    where = f"{source}:{line}" if line else source
    key = ".".join(str(p) for p in path) or "(top level)"
    raise ConfigError(f"{where}: {key}: {message}")


def load_params(path: str | Path = "params.yaml") -> dict:
    """Read and validate params.yaml; fill train defaults from the schema."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file (run from the project root or pass --params)")
    text = path.read_text(encoding="utf-8")
    try:
        root = yaml.compose(text, Loader=ParamsLoader)
        params = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    validate_params(params, str(path), root)
    params["train"] = {**settings_defaults(), **params["train"]}
    _check_study(params, str(path), root)
    _check_checkpoints(params, str(path), root)
    params["study"] = {**study_defaults(), **params.get("study", {})}
    params["evaluate"] = {**section_defaults("evaluate"), **params.get("evaluate", {})}
    return params


def dataset_spec(params: dict, name: str) -> dict:
    """The datasets.<name> entry, or a ConfigError listing the defined datasets."""
    datasets = params["datasets"]
    if name not in datasets:
        raise ConfigError(f"params.yaml: datasets.{name}: no such dataset; defined: {', '.join(datasets)}")
    return datasets[name]


def raw_source(params: dict, name: str) -> str:
    """The dataset whose raw file `name` reads: for a length group (`group_of`) that declares its parent's source and
    filename (`<<: *parent`), the parent, so the file is fetched once into data/raw/<parent>/; else `name` itself."""
    spec = dataset_spec(params, name)
    parent = params["datasets"].get(spec.get("group_of"))
    if parent is not None and (parent["source"], parent["filename"]) == (spec["source"], spec["filename"]):
        return spec["group_of"]
    return name


def checkpoint_spec(params: dict, name: str) -> dict:
    """The checkpoints.<name> entry, or a ConfigError listing the declared checkpoints."""
    declared = params.get("checkpoints", {})
    if name not in declared:
        raise ConfigError(f"params.yaml: checkpoints.{name}: no such checkpoint; declared: {', '.join(declared) or 'none'}")
    return declared[name]


def variant_spec(params: dict, name: str) -> dict:
    """The variants.<name> entry, or a ConfigError listing the defined variants."""
    variants = params["variants"]
    if name not in variants:
        raise ConfigError(f"params.yaml: variants.{name}: no such variant; defined: {', '.join(variants)}")
    return variants[name]


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn CLI `key=value` strings (values in YAML syntax) into validated run settings."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected key=value")
        try:
            overrides[key.strip()] = load_yaml(value)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"--set {pair!r}: value is not valid YAML ({problem})") from None
    _validate_settings(overrides, "--set")
    return overrides


def _validate_settings(settings: dict, source: str) -> None:
    """Check a flat dict of run settings against the schema's settings definition."""
    schema = {"$defs": load_schema()["$defs"], "$ref": "#/$defs/settings", "unevaluatedProperties": False}
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(settings))
    if error is not None:
        path, message = _describe(error)
        raise ConfigError(f"{source}: {'.'.join(map(str, path)) or '(settings)'}: {message}")


def run_config(params: dict, dataset: str, variant: str, overrides: dict | None = None) -> RunConfig:
    """resolve_run as a typed, frozen RunConfig (what training reads), `auto` settings resolved for the run device.

    resolve_run keeps `length_buckets: auto` as written: Snakemake reads those settings (a rule's params) while
    parsing, on whichever machine it runs, and they must not change with that machine's GPU.
    """
    from mclrec.device import resolve_device  # imports torch, which parsing the workflow does not need

    cfg = RunConfig.of(resolve_run(params, dataset, variant, overrides))
    return cfg.on_device(resolve_device(cfg.device).type)


def resolve_run(params: dict, dataset: str, variant: str, overrides: dict | None = None) -> dict[str, Any]:
    """Flat settings of one run: train < dataset overrides for the model < variant < CLI overrides."""
    spec = dataset_spec(params, dataset)
    var = variant_spec(params, variant)
    model = var["model"]
    settings = copy.deepcopy(params["train"])
    settings.update(copy.deepcopy(spec.get("overrides", {}).get(model, {})))
    settings.update({k: copy.deepcopy(v) for k, v in var.items() if k not in ("model", "description")})
    settings.update(overrides or {})
    settings.update(dataset=dataset, variant=variant, model=model, max_len=spec["preprocess"]["max_len"])
    # Validation during training chunks its scoring like the evaluation; the chunk size does not change scores,
    # so it is an evaluation setting and a change to it retrains nothing.
    settings["eval_batch_size"] = params.get("evaluate", {}).get("batch_size", section_defaults("evaluate")["batch_size"])
    if settings["loss"] == "bce" and model != "sasrec":
        raise ConfigError(f"params.yaml: variants.{variant}: loss 'bce' (the original SASRec objective, trained on whole "
                          f"sequences) is available for model 'sasrec' only, not '{model}'")
    if settings["hidden_size"] % settings["n_heads"]:
        raise ConfigError(f"run {dataset}/{variant}: hidden_size {settings['hidden_size']} is not a multiple of n_heads "
                          f"{settings['n_heads']} (each attention head takes hidden_size / n_heads dimensions)")
    return settings

