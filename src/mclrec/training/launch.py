"""Start N processes of one training on this machine, as `torchrun --standalone --nproc-per-node N` does.

torch's elastic launcher (the engine behind torchrun) spawns the workers with RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT set (a rendezvous on a free local port), watches them, and stops every other worker
as soon as one fails; here nothing is restarted (max_restarts 0: a resume is the user's or the workflow's call).
A failed worker becomes one TrainingError naming the rank and what it reported.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from mclrec.errors import MclrecError
from mclrec.training.errors import TrainingError

NOISY_LOGGERS = ("torch.distributed.elastic", "torch.multiprocessing")  # they log each failure's traceback


def launch(nproc: int, worker: Callable[..., Any], *args: Any) -> Any:
    """Run worker(*args) in `nproc` processes (module-level `worker`, picklable `args`); return rank 0's result.

    Each worker finds its place through Group.from_env. If one fails, the others are stopped and a TrainingError
    says which rank failed and why (its error message, or its exit code or signal).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1,
                          start_method="spawn")
    try:
        with _quiet(NOISY_LOGGERS):
            results = elastic_launch(config, _reporting)(worker, *args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        raise TrainingError(f"the training over {nproc} processes stopped: rank {rank} failed: "
                            f"{_reason(failure)}") from None
    return results[0]


def _reporting(worker: Callable[..., Any], *args: Any) -> Any:
    """worker(*args) in a launched process; an MclrecError is reported to the launcher as its message only."""
    try:
        return worker(*args)
    except MclrecError as exc:
        path = os.environ.get("TORCHELASTIC_ERROR_FILE")
        if path:
            with open(path, "w", encoding="utf-8") as fh:
                json.dump({"message": str(exc), "timestamp": int(time.time())}, fh)
        sys.exit(1)


def _reason(failure: Any) -> str:
    """What a failed worker reported: its message (an unexpected exception: with its traceback), else how it ended."""
    message = failure.message
    if isinstance(message, dict):  # an unexpected exception, recorded by torch with its traceback
        return f"{message.get('message')}\n{message.get('extraInfo', {}).get('py_callstack', '')}".rstrip()
    if failure.error_file_data.get("message") == message:  # read from the worker's error file
        return str(message)
    if failure.exitcode < 0:
        return f"killed by signal {failure.signal_name()} (pid {failure.pid})"
    return f"exited with code {failure.exitcode} (pid {failure.pid})"


@contextlib.contextmanager
def _quiet(names: tuple[str, ...]) -> Iterator[None]:
    """Silence these loggers while the launcher runs (the failure is reported once, as a TrainingError)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
