"""Fast pyarrow readers for the CSV and JSON-lines raw formats, returning (user, item, ts) tables."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from mclrec.data import diagnose as dg
from mclrec.data.rawio import arrow_stream

BLOCK_BYTES = 16 << 20
AMAZON_CHECKS = {"reviewerID": dg.is_id, "asin": dg.is_id, "unixReviewTime": dg.is_unix_time}
YELP_CHECKS = {"user_id": dg.is_id, "business_id": dg.is_id, "date": dg.is_yelp_date}


def read_ratings_csv(path: Path) -> pa.Table:
    """Read `user,item,rating,timestamp` (no header) into a (user, item, ts) table."""
    types = {"user": pa.string(), "item": pa.string(), "rating": pa.string(), "timestamp": pa.int64()}
    try:
        table = pacsv.read_csv(
            arrow_stream(path),
            read_options=pacsv.ReadOptions(column_names=list(dg.CSV_FIELDS), block_size=BLOCK_BYTES),
            convert_options=pacsv.ConvertOptions(column_types=types),
        )
    except pa.ArrowInvalid as exc:
        raise dg.diagnose_csv(path, str(exc)) from None
    if has_missing(table, ["user", "item", "rating", "timestamp"]):
        raise dg.diagnose_csv(path, "a field is missing")
    return _interactions(table, "user", "item", table.column("timestamp"))


def read_amazon_json(path: Path) -> pa.Table:
    """Read Amazon review JSON lines (`reviewerID`, `asin`, `unixReviewTime`)."""
    table = _read_json(path, AMAZON_CHECKS, {"unixReviewTime": pa.int64()})
    return _interactions(table, "reviewerID", "asin", table.column("unixReviewTime"))


def read_yelp_json(path: Path) -> pa.Table:
    """Read Yelp review JSON lines (`user_id`, `business_id`, `date`); ts = seconds since epoch, UTC."""
    table = _read_json(path, YELP_CHECKS, {"date": pa.string()})
    parsed = pc.strptime(table.column("date"), format=dg.YELP_DATE_FORMAT, unit="s", error_is_null=True)
    if parsed.null_count:
        raise dg.diagnose_json(path, YELP_CHECKS, "a date could not be parsed")
    return _interactions(table, "user_id", "business_id", parsed.cast(pa.int64()))


def _read_json(path: Path, checks: dict, extra_types: dict[str, pa.DataType]) -> pa.Table:
    """Read the listed fields of a JSON-lines file, ignoring all others; DataError on any bad line."""
    fields = [(name, extra_types.get(name, pa.string())) for name in checks]
    options = pajson.ParseOptions(explicit_schema=pa.schema(fields), unexpected_field_behavior="ignore")
    try:
        table = pajson.read_json(
            arrow_stream(path),
            read_options=pajson.ReadOptions(block_size=BLOCK_BYTES),
            parse_options=options,
        )
    except pa.ArrowInvalid as exc:
        raise dg.diagnose_json(path, checks, str(exc)) from None
    if has_missing(table, list(checks)):
        raise dg.diagnose_json(path, checks, "a field is missing")
    return table


def has_missing(table: pa.Table | pa.RecordBatch, columns: list[str]) -> bool:
    """True if any listed column has a null or an empty string (a whole table, or one batch of a streamed file)."""
    for name in columns:
        col = table.column(name)
        if col.null_count:
            return True
        if pa.types.is_string(col.type) and len(col) and pc.any(pc.equal(pc.utf8_length(col), 0)).as_py():
            return True
    return False


def _interactions(table: pa.Table, user: str, item: str, ts: pa.ChunkedArray) -> pa.Table:
    """The (user, item, ts) table in file order."""
    return pa.table({"user": table.column(user), "item": table.column(item), "ts": ts})
