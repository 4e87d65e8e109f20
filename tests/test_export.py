"""`mclrec export recbole`: RecBole benchmark files hold exactly our training prefixes and evaluation rows."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mclrec.cli import app
from mclrec.data.preprocess import preprocess
from mclrec.data.processed import padded_inputs, prefix_instances

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _read(path: Path) -> tuple[str, list[list[str]]]:
    lines = path.read_text().splitlines()
    return lines[0], [line.split("\t") for line in lines[1:]]


def test_export_writes_our_instances_with_original_ids(tiny, tiny_dir, tmp_path):
    res = runner.invoke(app, ["export", "recbole", "synthetic", "--data-dir", str(tiny_dir), "--out", str(tmp_path),
                              "--params", str(ROOT / "params.yaml")])
    assert res.exit_code == 0, res.output
    items = pq.read_table(tiny_dir / "items.parquet").to_pandas().set_index("item")["original_id"].astype(str)
    users = pq.read_table(tiny_dir / "users.parquet").to_pandas().set_index("user")["original_id"].astype(str)
    folder = tmp_path / "synthetic"
    for split, (inputs, lengths, targets, owners) in (
            ("train", prefix_instances(tiny.train, tiny.max_len)), ("valid", padded_inputs(tiny.valid, tiny.max_len)),
            ("test", padded_inputs(tiny.test, tiny.max_len))):
        header, rows = _read(folder / f"synthetic.{split}.inter")
        assert header == "user_id:token\titem_id_list:token_seq\titem_id:token"
        assert len(rows) == len(targets)
        for row, seq, n, target, owner in zip(rows[:50], inputs, lengths, targets, owners):
            assert row == [users[owner], " ".join(items[i] for i in seq[:n]), items[target]]
    mapping = (folder / "synthetic.items.tsv").read_text().splitlines()
    assert mapping[0] == "item\toriginal_id" and len(mapping) == tiny.n_items + 1
    config = (folder / "recbole.yaml").read_text()
    assert "benchmark_filename: [train, valid, test]" in config and "MAX_ITEM_LIST_LENGTH: 20" in config


@pytest.mark.parametrize(("user", "item", "table", "shown"), [
    ("u", "NA", "items", "'NA'"), ("u", "a b", "items", "'a b'"), ("u", '"q', "items", "'\"q'"),
    ("null", "i", "users", "'null'"), ('"x"', "i", "users", "'\"x\"'"), ("u v", 'q"', "", ""),
])
def test_export_refuses_ids_recbole_would_read_otherwise(tmp_path, user, item, table, shown):
    rows = [(f"U{u}", f"I{(u + k) % 6}") for u in range(6) for k in range(5)]
    rows = [(user if u == "U0" else u, item if i == "I0" else i) for u, i in rows]  # one odd user and item
    raw = tmp_path / "raw.inter"
    raw.write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                   + "".join(f"{u}\t{i}\t{n}\n" for n, (u, i) in enumerate(rows)))
    preprocess(raw, "recbole-inter", 3, 1, 10, tmp_path / "processed")
    res = runner.invoke(app, ["export", "recbole", "synthetic", "--data-dir", str(tmp_path / "processed"), "--out",
                              str(tmp_path / "export"), "--params", str(ROOT / "params.yaml")])
    said = " ".join(res.output.split())
    if not table:  # a space inside a user id and a quote inside an item id: RecBole reads both back as they are
        assert res.exit_code == 0, said
        return
    assert res.exit_code == 1 and f"{table}.parquet: original {table[:-1]} ids [{shown}" in said, said
    assert "cannot be RecBole tokens" in said and not (tmp_path / "export").exists()


def test_export_out_that_is_a_file_is_refused_before_any_work(tiny_dir, tmp_path):
    (tmp_path / "taken").write_text("a file")
    res = runner.invoke(app, ["export", "recbole", "synthetic", "--data-dir", str(tiny_dir), "--out",
                              str(tmp_path / "taken"), "--params", str(ROOT / "params.yaml")])
    assert res.exit_code == 1 and "is a file, not a folder" in " ".join(res.output.split())
    res = runner.invoke(app, ["export", "recbole-checkpoint", "-d", "synthetic", "--checkpoint", "x.pt", "--out",
                              str(tmp_path), "--data-dir", str(tiny_dir), "--params", str(ROOT / "params.yaml")])
    assert res.exit_code == 1 and "is a folder; give a file path" in " ".join(res.output.split())
