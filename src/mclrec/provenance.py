"""How a trained run's settings relate to params.yaml: what params.yaml would have to say to train it as it was."""

from __future__ import annotations

from typing import Any, Mapping

from mclrec import config
from mclrec.checkpoint import LEGACY_SETTINGS, RETIRED_SETTINGS
from mclrec.pipeline import run_of
from mclrec.run_config import AUTO, AUTO_SETTINGS, FROM_EVALUATE, IDENTITY, RunConfig

# not compared: which run of a study it is (seed), how it was run (threads, device, processes) and evaluation settings
NOT_COMPARED = frozenset({"seed", "num_threads", "device", "nproc", *IDENTITY, *FROM_EVALUATE, *RETIRED_SETTINGS})
DEVICE_TYPES = ("cpu", "cuda")


def settings_beyond_params(trained: Mapping[str, Any], params: dict, dataset: str, run: str,
                           device: str | None = "cpu") -> dict[str, Any] | None:
    """{setting: the value the run was trained with} for every setting in which it differs from what `params` (the
    validated params.yaml) resolves now for `run` (a variant or a grid cell) on `dataset` on the type of `device`
    (as a run records it: "cpu", "cuda:0"; None: cpu); None when
    params.yaml no longer declares the dataset or the variant. Settings older checkpoints did not record take the
    values those runs used (checkpoint.LEGACY_SETTINGS). Where params.yaml says `auto`, what `auto` means on either
    device type counts as given (a run keeps its first device's value when resumed on the other)."""
    if not run:
        return None
    job = run_of(dataset, run, 0)
    if dataset not in params["datasets"] or job.variant not in params["variants"]:
        return None
    overrides = config.parse_overrides([f"{key}={value}" for key, value in job.sets])
    declared = RunConfig.of(config.resolve_run(params, dataset, job.variant, overrides))
    now = declared.on_device("cuda" if str(device or "cpu").startswith("cuda") else "cpu").to_dict()
    recorded = {**LEGACY_SETTINGS, **trained}

    def given(key: str) -> bool:
        if key in AUTO_SETTINGS and getattr(declared, key) == AUTO:
            return recorded[key] in [AUTO_SETTINGS[key](AUTO, kind) for kind in DEVICE_TYPES]
        return recorded[key] == now[key]

    return {key: recorded[key] for key in sorted(now) if key not in NOT_COMPARED and key in recorded and not given(key)}

