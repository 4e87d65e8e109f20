"""Our split as RecBole benchmark files, so RecBole trains and evaluates on exactly the same instances.

For `benchmark_filename: [train, valid, test]` RecBole reads `<name>.train.inter`, `<name>.valid.inter` and
`<name>.test.inter` as given, with no splitting of its own. Sequential models take pre-built instances:
`user_id:token`, `item_id_list:token_seq` (the input, oldest first, space-separated) and `item_id:token` (the
target). Train rows are our training prefixes (every prefix of each user's training sequence, last max_len items),
valid and test rows one per user. Ids are the original ids (tokens), so RecBole's own id mapping applies;
`<name>.items.tsv` maps our item ids to them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from mclrec.data.processed import ProcessedData, padded_inputs, prefix_instances
from mclrec.io import atomic_open

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


def export_recbole(data: ProcessedData, processed_dir: Path, name: str, out_dir: Path) -> list[Path]:
    """Write out_dir/<name>/<name>.{train,valid,test}.inter, <name>.items.tsv and recbole.yaml; return the paths."""
    users = pq.read_table(Path(processed_dir) / "users.parquet").to_pandas().sort_values("user")
    items = pq.read_table(Path(processed_dir) / "items.parquet").to_pandas().sort_values("item")
    user_labels = users["original_id"].astype(str).to_numpy()
    item_labels = items["original_id"].astype(str).to_numpy()
    folder = Path(out_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    splits = {"train": prefix_instances(data.train, data.max_len), "valid": padded_inputs(data.valid, data.max_len),
              "test": padded_inputs(data.test, data.max_len)}
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
