"""The training's own error type (its own module: the trainer and its distributed helpers both raise it)."""

from mclrec.errors import MclrecError


class TrainingError(MclrecError):
    """Training cannot go on (non-finite loss, incompatible resume, processes that disagree or fail)."""
