"""Our split as RecBole benchmark files, so RecBole trains and evaluates on exactly the same instances.

For `benchmark_filename: [train, valid, test]` RecBole reads `<name>.train.inter`, `<name>.valid.inter` and
`<name>.test.inter` as given, with no splitting of its own. Sequential models take pre-built instances:
`user_id:token`, `item_id_list:token_seq` (the input, oldest first, space-separated) and `item_id:token` (the
target). Train rows are our training prefixes (every prefix of each user's training sequence, last max_len items),
valid and test rows one per user. Ids are the original ids (tokens), so RecBole's own id mapping applies;
`<name>.items.tsv` maps our item ids to them.

export_recbole_checkpoint writes a trained encoder as a checkpoint RecBole's SASRec loads for that split, its
item-embedding rows in RecBole's own item numbering (recbole_item_order). The reverse direction, a SASRec RecBole
trained on the exported files read by `mclrec evaluate`/`recommend`, is `--item-order recbole-export`
(mclrec.evaluation.evaluate.recbole_item_rows), which uses recbole_item_order too.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from mclrec.data.processed import ProcessedData, padded_inputs, prefix_instances
from mclrec.errors import MclrecError
from mclrec.io import atomic_open

BENCHMARK_FILENAME = ["train", "valid", "test"]  # recbole.yaml's benchmark_filename: <name>.<split>.inter
HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token\n"

RECBOLE_CONFIG = """# RecBole config for the exported split (data_path: the folder that holds the {name}/ folder)
dataset: {name}
data_path: {data_path}
benchmark_filename: [train, valid, test]
USER_ID_FIELD: user_id
ITEM_ID_FIELD: item_id
load_col:
  inter: [user_id, item_id_list, item_id]
alias_of_item_id: [item_id_list]
MAX_ITEM_LIST_LENGTH: {max_len}
train_neg_sample_args: ~
loss_type: CE
eval_args:
  order: TO
  mode: full
metrics: [Hit, NDCG, MRR]
topk: [5, 10, 20]
valid_metric: MRR@10
"""


def _rows(inputs: np.ndarray, lengths: np.ndarray, targets: np.ndarray, users: np.ndarray, user_labels: np.ndarray,
          item_labels: np.ndarray) -> list[str]:
    """One tab-separated line per instance, ids as original-id tokens."""
    lines = []
    for seq, n, target, user in zip(inputs, lengths, targets, users):
        lines.append(f"{user_labels[user - 1]}\t{' '.join(item_labels[seq[:n] - 1])}\t{item_labels[target - 1]}\n")
    return lines


def _labels(processed_dir: Path, table: str, key: str) -> np.ndarray:
    """The original ids (as the string tokens the export writes) of users or items 1..N, in id order."""
    frame = pq.read_table(Path(processed_dir) / f"{table}.parquet").to_pandas().sort_values(key)
    return frame["original_id"].astype(str).to_numpy()


def _split_instances(data: ProcessedData) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """The rows of each exported file, in file order: (inputs, lengths, targets, users)."""
    return {"train": prefix_instances(data.train, data.max_len), "valid": padded_inputs(data.valid, data.max_len),
            "test": padded_inputs(data.test, data.max_len)}


def export_recbole(data: ProcessedData, processed_dir: Path, name: str, out_dir: Path) -> list[Path]:
    """Write out_dir/<name>/<name>.{train,valid,test}.inter, <name>.items.tsv and recbole.yaml; return the paths."""
    user_labels = _labels(processed_dir, "users", "user")
    item_labels = _labels(processed_dir, "items", "item")
    check_recbole_tokens(user_labels, processed_dir, "users")
    check_recbole_tokens(item_labels, processed_dir, "items")
    folder = Path(out_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    splits = _split_instances(data)
    written = []
    for split, (inputs, lengths, targets, owners) in splits.items():
        path = folder / f"{name}.{split}.inter"
        with atomic_open(path, "w", encoding="utf-8") as fh:
            fh.write(HEADER)
            fh.writelines(_rows(inputs, lengths, targets, owners, user_labels, item_labels))
        written.append(path)
    mapping = folder / f"{name}.items.tsv"
    with atomic_open(mapping, "w", encoding="utf-8") as fh:
        fh.write("item\toriginal_id\n")
        fh.writelines(f"{i}\t{label}\n" for i, label in enumerate(item_labels, start=1))
    config = folder / "recbole.yaml"
    with atomic_open(config, "w", encoding="utf-8") as fh:
        fh.write(RECBOLE_CONFIG.format(name=name, data_path=Path(out_dir).resolve(), max_len=data.max_len))
    return written + [mapping, config]


# pandas.read_csv's default NA strings: RecBole reads the .inter files with pandas, which turns a token spelled like
# one of these into NaN (a missing id), so RecBole's numbering would no longer follow the tokens.
PANDAS_NA_TOKENS = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                              "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})
CHECKPOINT_FORMAT = "mclrec-recbole-sasrec"
CHECKPOINT_VERSION = 1


def recbole_item_order(data: ProcessedData) -> np.ndarray:
    """Our item ids in the order RecBole 1.x numbers them when it loads the files export_recbole writes: RecBole's
    item id k (1..n_items) is our item `order[k - 1]`; 0 is [PAD] for both.

    RecBole (Dataset._remap_ID_all -> _remap, 1.2.1) numbers item_id and its alias item_id_list together, with
    pd.factorize over: the item_id column of all rows (<name>.train.inter, .valid.inter, .test.inter concatenated in
    that order), then the item_id_list column of the same rows (each list oldest first); an item's id is 1 + the
    rank of its first appearance. This replicates that from the very instances export_recbole writes, so it needs
    neither the files nor RecBole (tests/test_export_recbole_checkpoint.py checks it against the files, and
    tests/fixtures/recbole-export/verify_in_recbole.py against RecBole 1.2.1 itself).
    """
    splits = _split_instances(data).values()
    targets = [target for _, _, target, _ in splits]
    inputs = [seq[np.arange(seq.shape[1])[None, :] < n[:, None]] for seq, n, _, _ in splits]  # row by row, in order
    ids = np.concatenate(targets + inputs)
    _, first = np.unique(ids, return_index=True)
    order = ids[np.sort(first)]
    if len(order) != data.n_items:
        absent = np.setdiff1d(np.arange(1, data.n_items + 1), order)
        raise MclrecError(f"{len(absent)} of {data.n_items} items (e.g. our ids {absent[:5].tolist()}) are in no "
                          "exported row, so RecBole would not number them: the processed data is inconsistent")
    return order


def check_recbole_tokens(labels: np.ndarray, processed_dir: Path, table: str = "items") -> None:
    """Ids RecBole reads back as they are, in `table` (users or items): distinct, none that pandas (which RecBole
    reads its files with) takes for a missing value, none starting with a quote (pandas reads a quoted field there,
    and the tab-separated rows no longer split), no tab or line break (they split the row), and for items no
    whitespace at all (item ids stand in space-separated token_seq fields)."""
    where = Path(processed_dir) / f"{table}.parquet"
    kind = table[:-1]
    splits = str.isspace if table == "items" else "\t\n\r\v\f".__contains__
    bad = [t for t in labels if t in PANDAS_NA_TOKENS or t.startswith('"') or any(splits(c) for c in t)]
    if bad:
        raise MclrecError(f"{where}: original {kind} ids {bad[:5]} cannot be RecBole tokens (pandas, which RecBole "
                          "reads its files with, takes them as missing values, or they start with a quote or hold "
                          + ("whitespace)" if table == "items" else "a tab or line break)"))
    if len(set(labels)) != len(labels):
        raise MclrecError(f"{where}: original {kind} ids are not distinct as strings")


def export_recbole_checkpoint(data: ProcessedData, processed_dir: Path, checkpoint: Path, out: Path,
                              dataset: str, variant: str | None = None) -> dict[str, Any]:
    """Write `out`: a checkpoint RecBole 1.x's SASRec loads for the split export_recbole writes from the same
    processed data (`torch.load(out)["state_dict"]` into `SASRec(config, dataset).load_state_dict`, or
    `Trainer.evaluate(test_data, model_file=out)`); return what was written.

    Item-embedding rows follow RecBole's own item numbering (recbole_item_order); `item_id_tokens` lists the
    original ids by RecBole id ([PAD] first), which is RecBole's `dataset.field2id_token["item_id"]`; `mclrec
    evaluate --checkpoint-format recbole` reads the rows back into our ids by it. Only plain
    values and tensors: it loads with torch.load(weights_only=True). No optimizer state, so RecBole's
    Trainer.resume_checkpoint (which needs RecBole's optimizer) does not apply: fine-tune with a fresh optimizer.
    """
    import torch

    from mclrec.checkpoint import check_catalogue, load_checkpoint
    from mclrec.models.parts import build_parts
    from mclrec.models.recbole import recbole_sasrec_config, to_recbole_sasrec_state_dict

    checkpoint = Path(checkpoint)
    meta = load_checkpoint(checkpoint)  # not evaluate.load_encoder: evaluation reads these files back (no circle)
    check_catalogue(checkpoint, meta, data)
    encoder = build_parts(meta["config"], meta["n_items"]).encoder
    encoder.load_state_dict(meta["modules"]["encoder"])
    encoder.eval()
    if encoder.max_len != data.max_len:
        raise MclrecError(f"{checkpoint}: checkpoint has max_len={encoder.max_len}, the dataset "
                          f"(MAX_ITEM_LIST_LENGTH of its RecBole export) has {data.max_len}")
    item_labels = _labels(processed_dir, "items", "item")
    check_recbole_tokens(item_labels, processed_dir)
    order = recbole_item_order(data)
    settings = meta["config"]
    state = meta.get("state") or {}
    payload = {
        "state_dict": to_recbole_sasrec_state_dict(encoder, order),
        "other_parameter": None,
        # the split it was exported for: a copy stripped of item_id_tokens is then refused without --item-order
        # (mclrec.evaluation.evaluate.recbole_item_rows) instead of being read as if its rows were our item ids
        "config": {**recbole_sasrec_config(settings, dataset), "benchmark_filename": BENCHMARK_FILENAME},
        "epoch": int(meta["epoch"]),
        "cur_step": 0,
        "best_valid_score": state.get("best_metric"),
        "item_id_tokens": ["[PAD]"] + item_labels[order - 1].tolist(),
        "mclrec": {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "dataset": dataset,
                   "variant": variant, "source": str(checkpoint), "n_items": int(data.n_items),
                   "recbole_to_mclrec_item": [0] + order.tolist(), "settings": settings,
                   "mclrec_version": meta.get("mclrec_version")},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_open(out, "wb") as fh:
        fh.write(buffer.getbuffer())
    return {"path": Path(out), "n_items": int(data.n_items), "rows": int(data.n_items) + 1, "epoch": payload["epoch"],
            "model": settings.get("model"), "dropped": sorted(set(meta["modules"]) - {"encoder"})}
