"""Raw format readers: parsed content and error messages that name the file and line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from mclrec.data import seqtxt
from mclrec.data.formats import FORMATS, read_raw
from mclrec.errors import DataError


def write(path: Path, text: str, gz: bool = False) -> Path:
    """Write `text` to `path`, gzip-compressed if asked."""
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def rows(df) -> list[tuple[str, str, int]]:
    """The DataFrame as (user, item, ts) tuples."""
    return list(zip(df["user"], df["item"], df["ts"].tolist()))


def jsonl(records: list[dict]) -> str:
    """JSON-lines text."""
    return "".join(json.dumps(r) + "\n" for r in records)


# --- seqtxt -----------------------------------------------------------------------------------


def test_seqtxt_parses_in_file_order_with_positions_as_ts(tmp_path):
    path = write(tmp_path / "a.txt", "1 10 20\n\n2 20 30 10\n")
    df = read_raw(path, "seqtxt")
    assert rows(df) == [("1", "10", 0), ("1", "20", 1), ("2", "20", 2), ("2", "30", 3), ("2", "10", 4)]
    assert str(df["user"].dtype) == "str" and str(df["ts"].dtype) == "int64"


def test_seqtxt_tabs_crlf_missing_final_newline_and_gzip(tmp_path):
    path = write(tmp_path / "a.bin", "7\t3  4\r\n\r\n8 4 5", gz=True)
    assert rows(read_raw(path, "seqtxt")) == [("7", "3", 0), ("7", "4", 1), ("8", "4", 2), ("8", "5", 3)]


def test_seqtxt_chunked_parse_matches_and_counts_lines(tmp_path, monkeypatch):
    text = "".join(f"{u} {u + 100} {u + 200}\n" for u in range(1, 60))
    path = write(tmp_path / "a.txt", text)
    whole = rows(read_raw(path, "seqtxt"))
    monkeypatch.setattr(seqtxt, "CHUNK_BYTES", 16)
    assert rows(read_raw(path, "seqtxt")) == whole
    bad = write(tmp_path / "b.txt", text + "60 61 6x2\n")
    with pytest.raises(DataError, match=r"b\.txt, line 60: id '6x2' is not a positive integer"):
        read_raw(bad, "seqtxt")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 2 3\n2 4 x5\n", r"line 2: id 'x5' is not a positive integer"),
        ("1 2 3\n\n2 4 -5\n", r"line 3: id '-5' is not a positive integer"),
        ("1 2 3\n2\n", r"line 2: user 2 has no items"),
        ("1 2 3\n2 0 4\n", r"line 2: id 0 is not a positive integer"),
        ("1 2 3\n2 1234567890123456789012\n", r"line 2: id '1234567890123456789012' is too large"),
        ("", r"no interactions"),
        ("\n  \n", r"no interactions"),
    ],
)
def test_seqtxt_errors_name_file_and_line(tmp_path, text, message):
    path = write(tmp_path / "bad.txt", text)
    with pytest.raises(DataError, match=r"bad\.txt.*" + message):
        read_raw(path, "seqtxt")


# --- amazon-ratings-csv -----------------------------------------------------------------------


def test_ratings_csv_parses(tmp_path):
    path = write(tmp_path / "r.csv", "A1,B1,5.0,1300000000\nA2,B1,3.0,1200000000\n\nA1,B2,4.0,1300000000\n")
    assert rows(read_raw(path, "amazon-ratings-csv")) == [
        ("A1", "B1", 1300000000),
        ("A2", "B1", 1200000000),
        ("A1", "B2", 1300000000),
    ]


def test_ratings_csv_gzip_detected_by_magic_bytes(tmp_path):
    path = write(tmp_path / "r.csv", "A1,B1,5.0,1\n", gz=True)
    assert rows(read_raw(path, "amazon-ratings-csv")) == [("A1", "B1", 1)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b,5,1\nc,d,5\n", r"line 2: expected 4 fields"),
        ("a,b,5,1\n\nc,d,5,1,9\n", r"line 3: expected 4 fields"),
        ("a,b,5,1\nc,,5,2\n", r"line 2: missing field 'item'"),
        ("a,b,5,1\nc,d,5,\n", r"line 2: missing field 'timestamp'"),
        ("a,b,5,1\nc,d,5,12.5\n", r"line 2: timestamp '12.5' is not an integer"),
        ("a,b,5,1\nc,d,5,1\ne,f,4,soon\n", r"line 3: timestamp 'soon' is not an integer"),
        ("user,item,rating,timestamp\na,b,5,1\n", r"line 1: timestamp 'timestamp' is not an integer \(the format has no"),
        ("", r"no interactions"),
    ],
)
def test_ratings_csv_errors_name_file_and_line(tmp_path, text, message):
    path = write(tmp_path / "bad.csv", text)
    with pytest.raises(DataError, match=r"bad\.csv.*" + message):
        read_raw(path, "amazon-ratings-csv")


# --- amazon-reviews-json ----------------------------------------------------------------------

AMAZON = [
    {"reviewerID": "A1", "asin": "B1", "overall": 5.0, "unixReviewTime": 20, "reviewText": "long " * 50,
     "helpful": [1, 2], "style": {"Size:": "L"}},
    {"asin": "B2", "reviewerID": "A2", "unixReviewTime": 10},
]


@pytest.mark.parametrize("gz", [False, True])
def test_amazon_json_parses_plain_and_gzip(tmp_path, gz):
    path = write(tmp_path / "reviews.json", jsonl(AMAZON), gz=gz)
    assert rows(read_raw(path, "amazon-reviews-json")) == [("A1", "B1", 20), ("A2", "B2", 10)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (jsonl(AMAZON) + '{"reviewerID": "A3", "asin": \n', r"line 3: invalid JSON"),
        (jsonl(AMAZON) + '{"reviewerID": "A3", "unixReviewTime": 5}\n', r"line 3: missing field 'asin'"),
        ('{"reviewerID": "A3", "asin": "B", "unixReviewTime": "x"}\n', r"line 1: invalid value 'x'"),
        (jsonl(AMAZON) + "\n" + '{"reviewerID": "", "asin": "B", "unixReviewTime": 1}\n',
         r"line 4: invalid value '' for field 'reviewerID'"),
        ("", r"no interactions"),
    ],
)
def test_amazon_json_errors_name_file_and_line(tmp_path, text, message):
    path = write(tmp_path / "bad.json", text)
    with pytest.raises(DataError, match=r"bad\.json.*" + message):
        read_raw(path, "amazon-reviews-json")


# --- yelp-reviews-json ------------------------------------------------------------------------

YELP = [
    {"review_id": "r1", "user_id": "u1", "business_id": "b1", "stars": 4, "date": "2015-01-01 00:00:10",
     "text": "ok"},
    {"user_id": "u2", "business_id": "b1", "date": "1970-01-02 00:00:00"},
]


@pytest.mark.parametrize("gz", [False, True])
def test_yelp_json_parses_dates_as_utc_seconds(tmp_path, gz):
    path = write(tmp_path / "yelp.json", jsonl(YELP), gz=gz)
    assert rows(read_raw(path, "yelp-reviews-json")) == [("u1", "b1", 1420070410), ("u2", "b1", 86400)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (jsonl(YELP) + '{"user_id": "u", "business_id": "b", "date": "2015-13-01 00:00:00"}\n',
         r"line 3: invalid value '2015-13-01 00:00:00' for field 'date'"),
        (jsonl(YELP) + '{"user_id": "u", "date": "2015-01-01 00:00:00"}\n', r"line 3: missing field 'business_id'"),
        ("[1, 2]\n", r"line 1: expected a JSON object"),
        ("not json\n", r"line 1: invalid JSON"),
    ],
)
def test_yelp_json_errors_name_file_and_line(tmp_path, text, message):
    path = write(tmp_path / "bad.json", text)
    with pytest.raises(DataError, match=r"bad\.json.*" + message):
        read_raw(path, "yelp-reviews-json")


# --- dispatcher -------------------------------------------------------------------------------


def test_unknown_format_lists_known_ones(tmp_path):
    path = write(tmp_path / "a.txt", "1 2\n")
    with pytest.raises(DataError, match="unknown raw format 'csv'.*" + ", ".join(FORMATS)):
        read_raw(path, "csv")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"nope\.txt: raw data file not found"):
        read_raw(tmp_path / "nope.txt", "seqtxt")
