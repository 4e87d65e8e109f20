"""params.yaml validation and run-setting resolution."""

from pathlib import Path

import pytest

from mclrec import config
from mclrec.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PARAMS_TEXT = (ROOT / "params.yaml").read_text()


def _load_with(tmp_path: Path, old: str, new: str) -> dict:
    assert old in PARAMS_TEXT, old
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS_TEXT.replace(old, new, 1))
    return config.load_params(path)


def _line_of(text: str) -> int:
    return PARAMS_TEXT.splitlines().index(next(l for l in PARAMS_TEXT.splitlines() if text in l)) + 1


def test_project_params_are_valid_and_declare_required_datasets():
    params = config.load_params(ROOT / "params.yaml")
    assert {"beauty", "sports", "yelp", "synthetic"} <= set(params["datasets"])
    for name in ("sasrec", "sasrec-bpr", "cl4srec", "duorec", "mclrec", "mclrec-j"):
        assert name in params["variants"]


def test_every_setting_has_a_default_and_params_list_them_all():
    params = config.load_params(ROOT / "params.yaml")
    defaults = config.settings_defaults()
    assert set(params["train"]) == set(defaults)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("batch_size: 256", "batch_size: many", "train.batch_size: 'many' is not of type 'integer'"),
        ("batch_size: 256", "batchsize: 256", "train.batchsize: unknown key 'batchsize' (did you mean 'batch_size'?)"),
        ("lambda_cl1: 0.03, beta: 0.1", "lambda_cl1: 0.03, bta: 0.1", "datasets.yelp.overrides.mclrec.bta: unknown key"),
        ("schedule: joint", "schedule: jont", "variants.mclrec-j.schedule: 'jont' is not one of"),
        ("sha256: 724b", "sha256: 24b", "datasets.yelp.source.sha256:"),
        ("    format: seqtxt\n    preprocess: {user_k: 5, item_k: 5, max_len: 50}\n    overrides:\n      mclrec: {lambda_cl1: 0.0,",
         "    format: seqtext\n    preprocess: {user_k: 5, item_k: 5, max_len: 50}\n    overrides:\n      mclrec: {lambda_cl1: 0.0,",
         "datasets.beauty.format: 'seqtext' is not one of"),
        ("user_k: 5, item_k: 5, max_len: 50}\n    overrides:\n      mclrec: {lambda_cl1: 0.04",
         "user_k: 2, item_k: 5, max_len: 50}\n    overrides:\n      mclrec: {lambda_cl1: 0.04",
         "datasets.sports.preprocess.user_k: 2 is less than the minimum of 3"),
        # a misspelt required key is named as itself, not as the required key it leaves missing
        ("mclrec-j: {model: mclrec,", "mclrec-j: {modle: mclrec,",
         "variants.mclrec-j.modle: unknown key 'modle' (did you mean 'model'?)"),
        ("    filename: Yelp.txt", "    filname: Yelp.txt", "datasets.yelp.filname: unknown key 'filname' (did you mean 'filename'?)"),
    ],
)
def test_bad_params_name_file_line_and_key(tmp_path, old, new, expected):
    with pytest.raises(ConfigError) as info:
        _load_with(tmp_path, old, new)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'params.yaml'}:")
    assert expected in message


def test_error_line_points_at_the_bad_key(tmp_path):
    with pytest.raises(ConfigError) as info:
        _load_with(tmp_path, "batch_size: 256", "batch_size: many")
    assert f"params.yaml:{_line_of('batch_size: 256')}:" in str(info.value)


def test_a_bad_dataset_name_is_reported_at_its_own_line_with_the_rule(tmp_path):
    with pytest.raises(ConfigError) as info:
        _load_with(tmp_path, "  yelp: &yelp", "  Yelp.v2: &yelp")
    assert f"params.yaml:{_line_of('  yelp: &yelp')}: datasets.Yelp.v2: 'Yelp.v2' is not an allowed name: lower-case " \
           "letters, digits, _ and -" in str(info.value)


def test_an_upper_case_sha256_is_valid(tmp_path):
    sha = next(line for line in PARAMS_TEXT.splitlines() if "sha256: 724b" in line).split("sha256:")[1].strip()
    _load_with(tmp_path, f"sha256: {sha}", f"sha256: {sha.upper()}")


def test_source_must_have_one_form(tmp_path):
    with pytest.raises(ConfigError, match="datasets.yelp.source: must have exactly one of the forms: url\\+sha256"):
        _load_with(tmp_path, "      url: https://raw.githubusercontent.com/QinHsiu/MCLRec/main/dataset/Yelp/Yelp.txt\n", "")


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="invalid YAML"):
        _load_with(tmp_path, "train:\n", "train: [\n")
    with pytest.raises(ConfigError, match="no such params file"):
        config.load_params(tmp_path / "absent.yaml")


def test_a_key_given_twice_names_both_lines_but_merged_keys_may_be_overridden(tmp_path):
    train = _line_of("train:")
    with pytest.raises(ConfigError) as info:
        _load_with(tmp_path, "train:\n", "train:\n  lr: 0.5\n")  # an edit above the existing `lr:` line
    lr = _line_of("  lr: ") + 1  # the existing line, one further down after the insertion
    assert f"params.yaml:{lr}: invalid YAML: duplicate key 'lr' (first given on line {train + 1})" in str(info.value)
    sports = config.load_params(ROOT / "params.yaml")["datasets"]["sports-len5"]  # `<<: *sports` then overrides
    assert sports["preprocess"]["length_group"] == {"min": 5, "max": 5} and sports["format"] == "seqtxt"
    with pytest.raises(ConfigError, match="not valid YAML.*duplicate key 'a'"):
        config.parse_overrides(["length_buckets={a: 1, a: 2}"])


def test_a_set_value_that_is_not_yaml_is_one_line():
    with pytest.raises(ConfigError) as info:
        config.parse_overrides(["length_buckets=[8,"])
    assert str(info.value) == ("--set 'length_buckets=[8,': value is not valid YAML (expected the node content, but "
                               "found '<stream end>')")


def test_unknown_dataset_and_variant_list_the_defined_ones():
    params = config.load_params(ROOT / "params.yaml")
    with pytest.raises(ConfigError, match="datasets.movielens: no such dataset; defined: synthetic, beauty"):
        config.resolve_run(params, "movielens", "mclrec")
    with pytest.raises(ConfigError, match="variants.mclrecc: no such variant"):
        config.resolve_run(params, "beauty", "mclrecc")


def test_resolution_order_train_dataset_variant_cli():
    params = config.load_params(ROOT / "params.yaml")
    beauty = config.resolve_run(params, "beauty", "mclrec")
    assert (beauty["lambda_cl1"], beauty["beta"]) == (0.0, 0.05)  # dataset overrides for the model
    sports = config.resolve_run(params, "sports", "mclrec-no-cl1")
    assert (sports["lambda_cl1"], sports["beta"]) == (0.0, 0.4)  # the variant's switch wins
    assert config.resolve_run(params, "beauty", "cl4srec")["lambda_cl1"] == 0.1  # mclrec overrides don't leak
    cli = config.resolve_run(params, "yelp", "mclrec", config.parse_overrides(["beta=0.3", "max_minutes=null"]))
    assert cli["beta"] == 0.3 and cli["max_minutes"] is None
    assert (cli["model"], cli["variant"], cli["dataset"], cli["max_len"]) == ("mclrec", "mclrec", "yelp", 50)


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [(["beta"], "expected key=value"), (["beta=x"], "--set: beta: 'x' is not of type 'number'"),
     (["bta=0.1"], "unknown key 'bta' (did you mean 'beta'?)"), (["schedule=fast"], "'fast' is not one of"),
     (["adam=sgd"], "--set: adam: 'sgd' is not one of ['fused', 'foreach']"),
     (["fused_losses=maybe"], "--set: fused_losses: 'maybe' is not of type 'boolean'"),
     (["learning_rate=0.01"], "unknown key 'learning_rate' (RecBole's name for 'lr')"),
     (["stopping_step=3"], "unknown key 'stopping_step' (RecBole's name for 'patience')")],
)
def test_cli_overrides_are_validated(pairs, expected):
    with pytest.raises(ConfigError) as info:
        config.parse_overrides(pairs)
    assert expected in str(info.value)


def test_minimal_params_get_schema_defaults(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(
        "datasets:\n  toy:\n    source: {manual: 'ask a colleague'}\n    filename: toy.txt\n"
        "    format: seqtxt\n    preprocess: {user_k: 5, item_k: 5, max_len: 20}\n"
        "train: {}\nvariants:\n  sasrec: {model: sasrec}\n"
    )
    params = config.load_params(path)
    run = config.resolve_run(params, "toy", "sasrec")
    assert run["batch_size"] == 256 and run["lr"] == 0.001 and run["max_len"] == 20


def test_study_names_must_exist(tmp_path):
    table4, datasets = _line_of("  table4: ["), _line_of("datasets: [beauty, sports, yelp]")
    with pytest.raises(ConfigError, match=f"params.yaml:{table4}: study.table4: 'mclrec-no-xyz' is not in variants"):
        _load_with(tmp_path, "mclrec-no-reg, mclrec-shared]", "mclrec-no-xyz, mclrec-shared]")
    with pytest.raises(ConfigError, match=f"params.yaml:{datasets}: study.datasets: 'ml1m' is not in datasets"):
        _load_with(tmp_path, "datasets: [beauty, sports, yelp]", "datasets: [beauty, ml1m]")
    sizes = _line_of("  batch_sizes: {")
    with pytest.raises(ConfigError, match=f"params.yaml:{sizes}: study.batch_sizes.64: 'mclrec-b65' is not in"):
        _load_with(tmp_path, '"64": mclrec-b64', '"64": mclrec-b65')


def test_run_config_has_exactly_the_schema_settings(params):
    import dataclasses

    from mclrec.config import load_schema, run_config
    from mclrec.run_config import FROM_EVALUATE, IDENTITY, RunConfig

    settings = set(load_schema()["$defs"]["settings"]["properties"])
    assert {f.name for f in dataclasses.fields(RunConfig)} == settings | set(IDENTITY) | set(FROM_EVALUATE)
    cfg = run_config(params, "beauty", "mclrec")
    assert (cfg.lambda_cl1, cfg.beta, cfg.model) == (0.0, 0.05, "mclrec")  # Beauty's per-dataset weights
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.beta = 1.0
    with pytest.raises(AttributeError):
        cfg.lambda_cl  # noqa: B018 - a mistyped name fails at once
    assert RunConfig.of(cfg.to_dict()) == cfg and cfg.replace(beta=0.2).beta == 0.2


def test_run_config_from_a_document_with_a_missing_or_unknown_key_is_refused(params):
    from mclrec.config import ConfigError, resolve_run
    from mclrec.run_config import RunConfig

    doc = resolve_run(params, "beauty", "sasrec")
    with pytest.raises(ConfigError, match=r"missing \['beta'\]"):
        RunConfig.of({k: v for k, v in doc.items() if k != "beta"})
    with pytest.raises(ConfigError, match=r"unknown \['betta'\]"):
        RunConfig.of({**doc, "betta": 0.1})
