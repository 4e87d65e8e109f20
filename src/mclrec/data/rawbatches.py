"""Raw files as a stream of (user, item[, ts]) record batches in file order, for the out-of-core engine.

Each reader parses with the same pyarrow options and runs the same checks as the whole-file reader of its format
(formats.read_raw), one block of about 16 MiB at a time: the ids, timestamps and error messages (file and line,
found by the same diagnostic scans) are the same, only the memory differs. A batch without a `ts` column is in
time order by file position (seqtxt, a .inter file without timestamp).
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from mclrec.data import diagnose as dg
from mclrec.data import recbole_inter, records
from mclrec.data.rawio import UTF8_BOM, arrow_stream, check_exists, is_gzip, text_lines
from mclrec.data.seqtxt import CHUNK_BYTES
from mclrec.data.seqtxt import parse_chunk as parse_seqtxt_chunk
from mclrec.errors import DataError

Batches = Iterator[pa.RecordBatch]


def raw_batches(path: Path, fmt: str) -> Batches:
    """The interactions of a raw file as record batches (user, item and, when the format has one, ts)."""
    path = Path(path)
    if fmt not in READERS:
        raise DataError(f"raw format {fmt!r} is not supported by the duckdb engine (it reads {', '.join(READERS)}); "
                        f"use --engine memory")
    check_exists(path)
    seen = False
    for batch in READERS[fmt](path):
        seen = seen or batch.num_rows > 0
        if batch.num_rows:
            yield batch
    if not seen:
        raise DataError(f"{path}: no interactions (the file is empty)")


def _seqtxt(path: Path) -> Batches:
    """seqtxt, parsed in whole-line chunks by the in-memory parser's chunk step (same ids, same line numbers)."""
    lines = 0
    for chunk in _line_chunks(path):
        users, items, newlines = parse_seqtxt_chunk(np.frombuffer(chunk, dtype=np.uint8), path, lines)
        lines += newlines
        yield pa.record_batch({"user": pa.array(users), "item": pa.array(items)})


def _line_chunks(path: Path) -> Iterator[bytes]:
    """The (decompressed) file in pieces of about CHUNK_BYTES that end at a newline (the last one may not); a
    leading UTF-8 BOM is left out."""
    with _binary(path) as fh:
        carry = b""
        block = fh.read(CHUNK_BYTES)
        block = block[len(UTF8_BOM):] if block.startswith(UTF8_BOM) else block
        while block:
            data = carry + block
            cut = data.rfind(b"\n") + 1
            carry = data[cut:]
            if cut:
                yield data[:cut]
            block = fh.read(CHUNK_BYTES)
        if carry:
            yield carry


def _binary(path: Path) -> IO[bytes]:
    """A binary handle over the file, decompressing gzip transparently."""
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def _ratings_csv(path: Path) -> Batches:
    """`user,item,rating,timestamp` lines, as records.read_ratings_csv reads them."""
    types = {"user": pa.string(), "item": pa.string(), "rating": pa.string(), "timestamp": pa.int64()}
    reader = partial(  # opening reads the first block, so it is guarded too
        pacsv.open_csv,
        arrow_stream(path),
        read_options=pacsv.ReadOptions(column_names=list(dg.CSV_FIELDS), block_size=records.BLOCK_BYTES),
        convert_options=pacsv.ConvertOptions(column_types=types),
    )
    for batch in _guarded(reader, partial(dg.diagnose_csv, path)):
        if records.has_missing(batch, ["user", "item", "rating", "timestamp"]):
            raise dg.diagnose_csv(path, "a field is missing")
        yield _interactions(batch, "user", "item", batch.column("timestamp"))


def _amazon_json(path: Path) -> Batches:
    """Amazon review JSON lines, as records.read_amazon_json reads them."""
    for batch in _json(path, records.AMAZON_CHECKS, {"unixReviewTime": pa.int64()}):
        yield _interactions(batch, "reviewerID", "asin", batch.column("unixReviewTime"))


def _yelp_json(path: Path) -> Batches:
    """Yelp review JSON lines, as records.read_yelp_json reads them (ts = seconds since epoch, UTC)."""
    for batch in _json(path, records.YELP_CHECKS, {"date": pa.string()}):
        parsed = pc.strptime(batch.column("date"), format=dg.YELP_DATE_FORMAT, unit="s", error_is_null=True)
        if parsed.null_count:
            raise dg.diagnose_json(path, records.YELP_CHECKS, "a date could not be parsed")
        yield _interactions(batch, "user_id", "business_id", parsed.cast(pa.int64()))


def _json(path: Path, checks: dict, extra_types: dict[str, pa.DataType]) -> Batches:
    """The listed fields of a JSON-lines file, others ignored; DataError naming the first bad line."""
    fields = [(name, extra_types.get(name, pa.string())) for name in checks]
    options = pajson.ParseOptions(explicit_schema=pa.schema(fields), unexpected_field_behavior="ignore")
    reader = partial(pajson.open_json, arrow_stream(path),
                     read_options=pajson.ReadOptions(block_size=records.BLOCK_BYTES), parse_options=options)
    for batch in _guarded(reader, partial(dg.diagnose_json, path, checks)):
        if records.has_missing(batch, list(checks)):
            raise dg.diagnose_json(path, checks, "a field is missing")
        yield batch


def _recbole_inter(path: Path) -> Batches:
    """A RecBole .inter file, as recbole_inter.read_recbole_inter reads it; ts keeps the float timestamp (its
    order is what the in-memory reader's rank of it encodes)."""
    with text_lines(path) as fh:
        header = fh.readline()
    if not header.strip():
        raise DataError(f"{path}, line 1: empty; a RecBole .inter file starts with a header line")
    names = recbole_inter.parse_header(header, path)
    wanted = [name for name in ("user_id", "item_id", "timestamp") if name in names]
    diagnose = partial(recbole_inter.diagnose, path, names)  # the in-memory reader's scan: the same messages
    reader = partial(
        pacsv.open_csv,
        arrow_stream(path),
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=1, block_size=recbole_inter.BLOCK_BYTES),
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pacsv.ConvertOptions(column_types={name: pa.string() for name in names},
                                             include_columns=wanted, strings_can_be_null=False),
    )
    for batch in _guarded(reader, diagnose):
        for name in ("user_id", "item_id"):
            if pc.any(pc.equal(pc.utf8_length(batch.column(name)), 0)).as_py():
                raise diagnose(f"an empty {name}")
        columns = {"user": batch.column("user_id"), "item": batch.column("item_id")}
        if "timestamp" in names:
            columns["ts"] = _finite_stamps(batch.column("timestamp"), diagnose)
        yield pa.record_batch(columns)


def _finite_stamps(column: pa.Array, diagnose: Callable[[str], DataError]) -> pa.Array:
    """The timestamps as float64 (-0.0 made 0.0: the in-memory rank puts them in one tie); DataError if not finite."""
    try:
        stamps = pc.cast(column, pa.float64())
    except pa.ArrowInvalid:
        raise diagnose("a timestamp is not a number") from None
    if not pc.all(pc.is_finite(stamps)).as_py():
        raise diagnose("a timestamp is not a finite number")
    return pc.add(stamps, 0.0)


def _guarded(open_reader: Callable[[], Iterable[pa.RecordBatch]], diagnose: Callable[[str], DataError]) -> Batches:
    """The batches of a pyarrow streaming reader; a parse error becomes the diagnostic scan's DataError."""
    try:
        yield from open_reader()
    except pa.ArrowInvalid as exc:
        raise diagnose(str(exc)) from None


def _interactions(batch: pa.RecordBatch, user: str, item: str, ts: pa.Array) -> pa.RecordBatch:
    """The (user, item, ts) batch."""
    return pa.record_batch({"user": batch.column(user), "item": batch.column(item), "ts": ts})


READERS: dict[str, Callable[[Path], Batches]] = {
    "seqtxt": _seqtxt,
    "amazon-ratings-csv": _ratings_csv,
    "amazon-reviews-json": _amazon_json,
    "yelp-reviews-json": _yelp_json,
    "recbole-inter": _recbole_inter,
}
