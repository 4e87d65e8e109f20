"""The out-of-core preprocess engine: the interactions live in a DuckDB database on disk, not in Python.

Why DuckDB (and not Polars' streaming engine): k-core is an iterative fixpoint (one DELETE per round until
nothing changes), the id numbering is a window over per-user minima, and the per-user sequences are one big
ORDER BY; DuckDB runs each as SQL on a file-backed table under a hard `memory_limit`, spilling sorts, joins and
aggregates to its `temp_directory`, with no lazy-plan re-evaluation per round. The raw file is parsed by the
same pyarrow readers as the in-memory path (rawbatches.py), block by block, so ids and errors match exactly;
the outputs are streamed back one Parquet row group at a time (parquetstream.py), byte-identical to the
in-memory writer's.

Semantics are those of kcore.py and split.py: rows keep their file position `rn`; chronological order is
(ts, rn), i.e. a stable sort on ts; users and items are numbered 1..N by their first interaction in that order.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from mclrec.data import parquetstream
from mclrec.data.split import SPLIT_SCHEMA, leave_one_out

DEFAULT_MEMORY_LIMIT = "1.5GB"  # 100M ratings: peak RSS 3.0 GiB (2GB: 3.7 GiB); see docs/performance.md
FETCH_ROWS = 1 << 20
FIRST = "min({'t': ts, 'r': rn})"  # a user's (item's) first interaction in (ts, file position) order


@dataclass(frozen=True)
class RawCounts:
    """Size of the raw input: interactions and distinct users and items."""

    n_interactions: int
    n_users: int
    n_items: int


@contextlib.contextmanager
def workspace(beside: Path, memory_limit: str = DEFAULT_MEMORY_LIMIT) -> Iterator[Workspace]:
    """A DuckDB database in a temp folder next to `beside` (the output folder: same disk), removed afterwards."""
    beside.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{beside.name}.duckdb.", dir=beside.parent))
    try:
        config = {"memory_limit": memory_limit, "temp_directory": str(folder / "spill"),
                  "preserve_insertion_order": False}  # every query that needs an order says ORDER BY
        con = duckdb.connect(str(folder / "work.duckdb"), config=config)
        try:
            yield Workspace(con)
        finally:
            con.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class Workspace:
    """One raw file's interactions as integer codes `inter(rn, u, i, ts)`, with the label dictionaries."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def load(self, batches: Iterable[pa.RecordBatch]) -> RawCounts:
        """Store the batches (file order) with their row number; replace string ids by integer codes."""
        rn = 0
        for batch in batches:
            columns = {"rn": pa.array(np.arange(rn, rn + batch.num_rows, dtype=np.int64)),
                       "user": batch.column("user"), "item": batch.column("item")}
            columns["ts"] = batch.column("ts") if "ts" in batch.schema.names else columns["rn"]
            self.con.register("batch", pa.table(columns))
            self.con.execute("INSERT INTO raw SELECT * FROM batch" if rn else "CREATE TABLE raw AS SELECT * FROM batch")
            self.con.unregister("batch")
            rn += batch.num_rows
        for side in ("user", "item"):
            self.con.execute(f"CREATE TABLE {side}_dict AS SELECT label, (row_number() OVER ())::INTEGER AS code "
                             f"FROM (SELECT DISTINCT {side} AS label FROM raw)")
        self.con.execute("CREATE TABLE inter AS SELECT r.rn, u.code AS u, i.code AS i, r.ts FROM raw r "
                         "JOIN user_dict u ON r.user = u.label JOIN item_dict i ON r.item = i.label")
        self.con.execute("DROP TABLE raw")
        return RawCounts(rn, self._count("user_dict"), self._count("item_dict"))

    def kcore(self, user_k: int, item_k: int) -> int:
        """Delete the rows of users with < user_k and items with < item_k rows, round after round until none
        is left (kcore.kcore_mask's rounds); return the number of rows kept."""
        while self.con.execute(
            "DELETE FROM inter WHERE u IN (SELECT u FROM inter GROUP BY u HAVING count(*) < $uk) "
            "OR i IN (SELECT i FROM inter GROUP BY i HAVING count(*) < $ik)", {"uk": user_k, "ik": item_k},
        ).fetchall()[0][0]:
            pass
        return self._count("inter")

    def number(self) -> tuple[np.ndarray, int]:
        """Number users and items 1..N by first interaction; return each user's length (in id order), n_items."""
        for side, code in (("user", "u"), ("item", "i")):
            self.con.execute(f"CREATE TABLE {side}_ids AS SELECT {code}, count(*) AS len, "
                             f"(row_number() OVER (ORDER BY {FIRST}))::INTEGER AS id FROM inter GROUP BY {code}")
        self.con.execute("CREATE TABLE kept AS SELECT u, len, id AS gid FROM user_ids")
        lengths = self.con.execute("SELECT len FROM kept ORDER BY gid").fetchnumpy()["len"]
        return np.asarray(lengths, dtype=np.int64), self._count("item_ids")

    def keep_users(self, keep: np.ndarray) -> None:
        """Keep only the users whose entry of `keep` (in id order) is true, renumbered 1..U in their order."""
        flags = pa.table({"id": pa.array(np.arange(1, len(keep) + 1, dtype=np.int32)), "keep": pa.array(keep)})
        self.con.register("flags", flags)
        self.con.execute("CREATE OR REPLACE TABLE kept AS SELECT u, len, row_number() OVER (ORDER BY id) AS gid "
                         "FROM user_ids JOIN flags USING (id) WHERE keep")
        self.con.unregister("flags")

    def write(self, out: Path, lengths: np.ndarray, max_len: int) -> None:
        """Write train/valid/test (leave-one-out, one row group of users at a time) and the id tables."""
        self._write_ids(out / "users.parquet", "user",
                        "SELECT CAST(d.label AS VARCHAR) FROM kept k JOIN user_dict d ON d.code = k.u ORDER BY k.gid")
        self._write_ids(out / "items.parquet", "item",
                        "SELECT CAST(d.label AS VARCHAR) FROM item_ids t JOIN item_dict d ON d.code = t.i ORDER BY t.id")
        sequences = self._stream("SELECT t.id FROM inter JOIN kept k USING (u) JOIN item_ids t USING (i) "
                                 "ORDER BY k.gid, inter.ts, inter.rn")
        write_splits(out, lengths, _Taker(sequences), max_len)

    def _count(self, table: str) -> int:
        return int(self.con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])

    def _stream(self, sql: str) -> pa.RecordBatchReader:
        relation = self.con.sql(sql)  # a relation streams; a DB-API result (execute) copies all rows first
        read = getattr(relation, "to_arrow_reader", None) or relation.fetch_arrow_reader  # DuckDB 2 / 1.x names
        return read(FETCH_ROWS)

    def _write_ids(self, path: Path, column: str, sql: str) -> None:
        """An id table (split.id_table's schema): ids 1..N and the original ids the query returns in id order."""
        schema = pa.schema([(column, pa.int32()), ("original_id", pa.string())])
        labels = _Taker(self._stream(sql))
        with parquetstream.row_group_writer(path, schema) as writer:
            start = 1
            while len(chunk := labels.take_array(parquetstream.ROW_GROUP_ROWS)):
                ids = pa.array(np.arange(start, start + len(chunk), dtype=np.int32))
                writer.write(pa.Table.from_arrays([ids, chunk.cast(pa.string())], schema=schema))
                start += len(chunk)


def write_splits(out: Path, lengths: np.ndarray, items: _Taker, max_len: int) -> None:
    """train/valid/test.parquet from the users' lengths and their items streamed in (user, time) order."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    rows = parquetstream.ROW_GROUP_ROWS
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(parquetstream.row_group_writer(out / f"{name}.parquet", SPLIT_SCHEMA))
                   for name in ("train", "valid", "test")]
        for start in range(0, len(lengths), rows):
            stop = min(start + rows, len(lengths))
            flat = items.take_numpy(int(offsets[stop] - offsets[start]))
            users = pa.array(np.arange(start + 1, stop + 1, dtype=np.int32))
            for writer, table in zip(writers, leave_one_out(offsets[start:stop + 1] - offsets[start], flat, max_len)):
                writer.write(table.set_column(0, SPLIT_SCHEMA.field("user"), users))


class _Taker:
    """Takes exactly n values at a time from the first column of a record batch stream."""

    def __init__(self, reader: pa.RecordBatchReader) -> None:
        self._reader, self._pending, self._count, self._done = reader, [], 0, False

    def take_array(self, n: int) -> pa.Array:
        """The next n values (fewer at the end of the stream) as one contiguous array."""
        while self._count < n and not self._done:
            try:
                column = self._reader.read_next_batch().column(0)
            except StopIteration:
                self._done = True
                break
            self._pending.append(column)
            self._count += len(column)
        if not self._pending:
            return pa.array([], pa.int32())
        whole = pa.concat_arrays(self._pending) if len(self._pending) > 1 else self._pending[0]
        head, rest = whole.slice(0, n), whole.slice(n)
        self._pending, self._count = ([rest] if len(rest) else []), len(rest)
        return head

    def take_numpy(self, n: int) -> np.ndarray:
        """The next n values as int32 numpy; RuntimeError if the stream has fewer."""
        values = self.take_array(n).to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
        if len(values) != n:
            raise RuntimeError(f"the sequence stream ended early: {len(values)} of {n} items")
        return values
