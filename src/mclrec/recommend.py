"""Top-k recommendations from a trained model: for users named by their original ids, or an ad-hoc item sequence.

A user's input is the last `max_len` items of everything the processed dataset knows about them (the test
split's input and target), i.e. the next item after their whole history. Scores are the model's full-ranking
scores over items 1..N, computed in chunks whose size is bounded by the catalogue size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mclrec.data.processed import ProcessedData
from mclrec.errors import MclrecError
from mclrec.io import PARQUET_OPTIONS, atomic_path
from mclrec.models.encoder import SASRecEncoder
from mclrec.models.fast_encoding import encode

DEFAULT_BUCKETS = (8, 16, 32)  # exact (fast_encoding); used when the checkpoint does not name its own
SCORE_ELEMENTS = 1 << 26  # scores held at once: rows x items (256 MB of float32), for large catalogues
CHUNK_ROWS = 1024  # users per chunk otherwise: smaller score blocks stay in cache (Beauty: 1.7x faster than 5,000)
AD_HOC = "<sequence>"
# every chunk's columns: an empty chunk (all seen items excluded) would otherwise infer other types
RECOMMENDATIONS_SCHEMA = pa.schema([("user", pa.string()), ("rank", pa.int64()), ("item", pa.string()),
                                    ("score", pa.float32())])


@dataclass
class Catalogue:
    """Original ids of users and items and their model ids (1..U, 1..N)."""

    user_labels: np.ndarray  # index u-1 -> original id of user u
    item_labels: np.ndarray  # index i-1 -> original id of item i

    @classmethod
    def load(cls, directory: Path) -> "Catalogue":
        users = pq.read_table(Path(directory) / "users.parquet").to_pandas().sort_values("user")
        items = pq.read_table(Path(directory) / "items.parquet").to_pandas().sort_values("item")
        return cls(users["original_id"].astype(str).to_numpy(), items["original_id"].astype(str).to_numpy())

    def user_ids(self, originals: Sequence[str], places: Optional[Sequence[str]] = None) -> np.ndarray:
        """Model ids of users given by original id; MclrecError listing the first unknown ones (with their
        `places`, e.g. file:line, when given)."""
        return _lookup(self.user_labels, originals, "user", places)

    def known_users(self, originals: Sequence[str], places: Optional[Sequence[str]] = None
                    ) -> tuple[list[str], Optional[list[str]], list[str]]:
        """The users of `originals` the dataset knows (and their `places`), and the others as an error names them."""
        known = pd.Index(self.user_labels).get_indexer(pd.Index([str(x) for x in originals])) >= 0
        named = originals if places is None else [f"{place}: {x}" for place, x in zip(places, originals)]
        kept = [x for x, k in zip(originals, known) if k]
        kept_places = None if places is None else [p for p, k in zip(places, known) if k]
        return kept, kept_places, [str(x) for x, k in zip(named, known) if not k]

    def item_ids(self, originals: Sequence[str]) -> np.ndarray:
        """Model ids of items given by original id; MclrecError listing the first unknown ones."""
        return _lookup(self.item_labels, originals, "item")


def _lookup(labels: np.ndarray, originals: Sequence[str], kind: str,
            places: Optional[Sequence[str]] = None) -> np.ndarray:
    index = pd.Index(labels)
    positions = index.get_indexer(pd.Index([str(x) for x in originals]))
    named = originals if places is None else [f"{place}: {x}" for place, x in zip(places, originals)]
    unknown = [str(x) for x, p in zip(named, positions) if p < 0]
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise MclrecError(f"unknown {kind} id(s): {', '.join(unknown[:5])}{more} (not in the processed dataset)")
    return positions + 1


def read_users_file(path: Path) -> tuple[list[str], list[str]]:
    """The original user ids of a file, one per line (blank lines skipped), and where each stands (`file:line`);
    MclrecError when the file cannot be read or holds no id."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()  # -sig: a leading BOM skipped
    except (OSError, UnicodeDecodeError) as err:
        raise MclrecError(f"{path}: cannot read the users file ({err})") from err
    found = [(f"{path}:{number}", line.strip()) for number, line in enumerate(lines, 1) if line.strip()]
    if not found:
        raise MclrecError(f"{path}: no user ids (expected one original user id per line)")
    return [name for _, name in found], [place for place, _ in found]


def full_histories(data: ProcessedData) -> tuple[np.ndarray, np.ndarray]:
    """Every user's whole sequence i1..iL in CSR form (offsets [U+1], items): train input + the three targets."""
    train = data.train
    lengths = np.diff(train.offsets) + 3
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    items = np.empty(offsets[-1], dtype=np.int64)
    owner = np.repeat(np.arange(len(lengths)), np.diff(train.offsets))
    items[offsets[owner] + np.arange(len(train.items)) - train.offsets[owner]] = train.items
    for back, split in ((3, train), (2, data.valid), (1, data.test)):
        items[offsets[1:] - back] = split.targets
    return offsets, items


def _last_window(offsets: np.ndarray, items: np.ndarray, rows: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The last max_len items of each row's sequence, right-padded [len(rows), max_len], and their lengths."""
    ends = offsets[rows + 1]
    lengths = np.minimum(ends - offsets[rows], max_len)
    cols = np.arange(max_len)
    source = ends[:, None] - lengths[:, None] + cols
    seq = np.where(cols < lengths[:, None], items[np.minimum(source, len(items) - 1)], 0)
    return seq, lengths


@torch.no_grad()
def top_k(encoder: SASRecEncoder, seq: np.ndarray, lengths: np.ndarray, k: int, device: torch.device,
          seen: Optional[tuple[np.ndarray, np.ndarray]] = None, length_buckets: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Top-k item ids (1..N) and scores for a chunk of input rows; `seen` (offsets, items) are never recommended."""
    h = encode(encoder.eval(), torch.as_tensor(seq, device=device), torch.as_tensor(lengths, device=device),
               length_buckets)
    scores = encoder.full_scores(h)
    if seen is not None:
        offsets, items = seen
        rows = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
        scores[torch.as_tensor(rows, device=device), torch.as_tensor(items - 1, device=device)] = -torch.inf
    values, index = scores.topk(min(k, scores.shape[1]), dim=1)
    return (index + 1).cpu().numpy(), values.float().cpu().numpy()


def recommend_users(encoder: SASRecEncoder, data: ProcessedData, catalogue: Catalogue, users: np.ndarray, k: int,
                    device: torch.device, exclude_seen: bool = False, length_buckets: Sequence[int] = DEFAULT_BUCKETS,
                    on_chunk: Callable[[int], None] = lambda n: None) -> pd.DataFrame:
    """Top-k for users (model ids 1..U) from their whole history, as one frame (iter_recommendations' chunks)."""
    return pd.concat(iter_recommendations(encoder, data, catalogue, users, k, device, exclude_seen, length_buckets,
                                          on_chunk), ignore_index=True)


def iter_recommendations(encoder: SASRecEncoder, data: ProcessedData, catalogue: Catalogue, users: np.ndarray,
                         k: int, device: torch.device, exclude_seen: bool = False,
                         length_buckets: Sequence[int] = DEFAULT_BUCKETS,
                         on_chunk: Callable[[int], None] = lambda n: None) -> Iterator[pd.DataFrame]:
    """Top-k for users (model ids 1..U) from their whole history, one frame per memory-bounded chunk of users (at
    most CHUNK_ROWS, and SCORE_ELEMENTS scores), so that a writer need not hold every user's rows at once."""
    offsets, items = full_histories(data)
    chunk = max(1, min(CHUNK_ROWS, SCORE_ELEMENTS // data.n_items))
    for start in range(0, len(users), chunk):
        rows = users[start:start + chunk] - 1
        seq, lengths = _last_window(offsets, items, rows, data.max_len)
        seen = None
        if exclude_seen:
            counts = offsets[rows + 1] - offsets[rows]
            seen_offsets = np.concatenate([[0], np.cumsum(counts)])
            gather = np.repeat(offsets[rows] - seen_offsets[:-1], counts) + np.arange(seen_offsets[-1])
            seen = (seen_offsets, items[gather])
        ids, scores = top_k(encoder, seq, lengths, k, device, seen, length_buckets)
        yield _frame(catalogue.user_labels[rows], ids, scores, catalogue)
        on_chunk(len(rows))


def recommend_sequence(encoder: SASRecEncoder, data: ProcessedData, catalogue: Catalogue, originals: Iterable[str],
                       k: int, device: torch.device, exclude_seen: bool = False) -> pd.DataFrame:
    """Top-k after an ad-hoc sequence of original item ids (oldest first)."""
    originals = list(originals)
    if not originals:
        raise MclrecError("the item sequence is empty: give at least one item id")
    ids = catalogue.item_ids(originals)
    window = ids[-data.max_len:]
    seen = (np.array([0, len(ids)]), ids) if exclude_seen else None
    top, scores = top_k(encoder, window[None, :], np.array([len(window)]), k, device, seen)
    return _frame(np.array([AD_HOC]), top, scores, catalogue)


def _frame(user_labels: np.ndarray, ids: np.ndarray, scores: np.ndarray, catalogue: Catalogue) -> pd.DataFrame:
    """Long format: user, rank (1..k), item (original id), score. Excluded (seen) items score -inf and sort last:
    they are dropped, so a user with fewer than k unseen items gets fewer than k rows."""
    n, k = ids.shape
    frame = pd.DataFrame({"user": np.repeat(user_labels, k), "rank": np.tile(np.arange(1, k + 1), n),
                          "item": catalogue.item_labels[ids.ravel() - 1], "score": scores.ravel()})
    allowed = scores.ravel() != -np.inf
    return frame if allowed.all() else frame[allowed].reset_index(drop=True)


def write_recommendations(frames: pd.DataFrame | Iterable[pd.DataFrame], path: Path) -> dict[str, int]:
    """Write the recommendations (one frame, or chunks of one as iter_recommendations yields them, written as they
    come) as CSV, JSON lines or Parquet by the file's suffix, atomically; return the rows and distinct users."""
    path = Path(path)
    chunks = [frames] if isinstance(frames, pd.DataFrame) else frames
    counts, users = {"rows": 0}, set()
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            with pq.ParquetWriter(tmp, RECOMMENDATIONS_SCHEMA, **PARQUET_OPTIONS) as writer:
                for frame in chunks:
                    writer.write_table(pa.Table.from_pandas(frame, schema=RECOMMENDATIONS_SCHEMA, preserve_index=False))
                    _count(counts, users, frame)
            return {**counts, "users": len(users)}
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            for number, frame in enumerate(chunks):
                write_frame(frame, fh, path.suffix, header=number == 0)
                _count(counts, users, frame)
    return {**counts, "users": len(users)}


def write_frame(frame: pd.DataFrame, fh: IO[str], suffix: str, header: bool) -> None:
    """One chunk of recommendations as JSON lines (`.jsonl`) or CSV (the header with the first chunk)."""
    if suffix == ".jsonl":
        if len(frame):
            text = frame.to_json(orient="records", lines=True)
            fh.write(text if text.endswith("\n") else text + "\n")  # pandas < 1.5 left the last line open
    else:
        frame.to_csv(fh, index=False, header=header)


def _count(counts: dict[str, int], users: set, frame: pd.DataFrame) -> None:
    counts["rows"] += len(frame)
    users.update(frame["user"].unique())
