"""Parquet files written one row group at a time, byte-identical to mclrec.io.write_parquet of the whole table.

write_parquet calls pq.write_table, which cuts the table into row groups of pyarrow's default length and writes
each with one ParquetWriter. Handing the same writer the same row groups, each as single-chunk arrays (as the
in-memory path builds them), gives the same bytes; tests compare the files.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mclrec.io import atomic_path

ROW_GROUP_ROWS = 1024 * 1024  # pyarrow's default maximum row-group length, the one pq.write_table uses
WRITER_OPTIONS = {"compression": "zstd", "write_statistics": True, "store_schema": True}  # as io.write_parquet


class RowGroupWriter:
    """Appends full row groups of ROW_GROUP_ROWS rows (a shorter one only last) to one Parquet file."""

    def __init__(self, writer: pq.ParquetWriter, rows: int) -> None:
        self._writer, self._rows, self._closed_short = writer, rows, False

    def write(self, table: pa.Table) -> None:
        """Write `table` as the next row group; ValueError if the row groups would differ from write_table's."""
        if self._closed_short or not 0 < table.num_rows <= self._rows:
            raise ValueError(f"row group of {table.num_rows} rows after a short one or not in 1..{self._rows}")
        self._closed_short = table.num_rows < self._rows
        self._writer.write_table(table, row_group_size=self._rows)


@contextlib.contextmanager
def row_group_writer(path: Path, schema: pa.Schema) -> Iterator[RowGroupWriter]:
    """A RowGroupWriter on `path`, written atomically (a temp file renamed when the block succeeds)."""
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, **WRITER_OPTIONS) as writer:
        yield RowGroupWriter(writer, ROW_GROUP_ROWS)
