"""fetch_raw: file:// downloads, mirror copies, checksum failures that leave nothing behind."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mclrec.data.download import fetch_raw
from mclrec.errors import DataError

BENCH = Path(__file__).resolve().parents[2] / "shared" / "data"
CONTENT = b"1 1 2 3 4 5\n2 2 3 4 5 1\n"
SHA = hashlib.sha256(CONTENT).hexdigest()
WRONG = "0" * 64


@pytest.fixture
def origin(tmp_path) -> Path:
    """A source file outside the raw folder."""
    path = tmp_path / "origin" / "toy.txt"
    path.parent.mkdir()
    path.write_bytes(CONTENT)
    return path


def listing(folder: Path) -> list[str]:
    """All names inside `folder` (hidden temp files included), or [] if it does not exist."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_url_download_verifies_and_is_idempotent(tmp_path, origin):
    raw_dir = tmp_path / "raw" / "toy"
    dest = fetch_raw("toy", {"url": origin.as_uri(), "sha256": SHA}, "toy.txt", raw_dir, None)
    assert dest == raw_dir / "toy.txt" and dest.read_bytes() == CONTENT
    origin.unlink()
    assert fetch_raw("toy", {"url": origin.as_uri(), "sha256": SHA}, "toy.txt", raw_dir, None) == dest
    assert listing(raw_dir) == ["toy.txt"]


def test_an_upper_case_checksum_is_the_same_checksum(tmp_path, origin):
    raw_dir = tmp_path / "raw" / "toy"
    source = {"url": origin.as_uri(), "sha256": SHA.upper()}  # as some pages print it
    assert fetch_raw("toy", source, "toy.txt", raw_dir, None).read_bytes() == CONTENT
    assert fetch_raw("toy", source, "toy.txt", raw_dir, None) == raw_dir / "toy.txt"  # the file in place, verified


def test_url_checksum_mismatch_leaves_nothing(tmp_path, origin):
    raw_dir = tmp_path / "raw" / "toy"
    with pytest.raises(DataError, match=f"sha256 is {SHA} but {WRONG} was expected") as err:
        fetch_raw("toy", {"url": origin.as_uri(), "sha256": WRONG}, "toy.txt", raw_dir, None)
    assert str(raw_dir / "toy.txt") in str(err.value) and "MCLREC_MIRROR" in str(err.value)
    assert not (tmp_path / "raw").exists()  # not even the folders the download made
    raw_dir.mkdir(parents=True)  # a folder that was there stays
    with pytest.raises(DataError):
        fetch_raw("toy", {"url": origin.as_uri(), "sha256": WRONG}, "toy.txt", raw_dir, None)
    assert raw_dir.is_dir() and listing(raw_dir) == []


@pytest.mark.parametrize("where", ["url", "mirror", "in place"])
def test_checksum_errors_name_the_declaring_setting(tmp_path, origin, where):
    raw_dir = tmp_path / "raw"
    if where == "in place":
        raw_dir.mkdir()
        (raw_dir / "toy.txt").write_bytes(CONTENT)
    mirror = origin.parent if where == "mirror" else None
    declared = "params.yaml: datasets.toy.source.sha256"
    with pytest.raises(DataError) as err:
        fetch_raw("toy", {"url": origin.as_uri(), "sha256": WRONG}, "toy.txt", raw_dir, mirror, declared)
    message = str(err.value)
    assert f"sha256 is {SHA} but {WRONG} was expected ({declared})" in message
    assert "If the file is the right one, correct that setting." in message
    assert listing(raw_dir) == (["toy.txt"] if where == "in place" else [])


def test_unreachable_url_gives_clear_error(tmp_path):
    raw_dir = tmp_path / "raw" / "toy"
    with pytest.raises(DataError) as err:
        fetch_raw("toy", {"url": "http://127.0.0.1:9/x", "sha256": SHA}, "toy.txt", raw_dir, None)
    message = str(err.value)
    assert "download of http://127.0.0.1:9/x failed" in message
    assert f"place it at {raw_dir / 'toy.txt'}" in message
    assert "set MCLREC_MIRROR to a folder containing toy.txt" in message
    assert listing(raw_dir) == []


def test_missing_file_url_is_an_error(tmp_path):
    missing = (tmp_path / "nowhere.txt").as_uri()
    with pytest.raises(DataError, match="download of .*nowhere.txt failed"):
        fetch_raw("toy", {"url": missing, "sha256": SHA}, "toy.txt", tmp_path / "raw", None)


def test_mirror_copy(tmp_path, origin):
    raw_dir = tmp_path / "raw" / "toy"
    dest = fetch_raw("toy", {"url": "http://127.0.0.1:9/x", "sha256": SHA}, "toy.txt", raw_dir, origin.parent)
    assert dest.read_bytes() == CONTENT and listing(raw_dir) == ["toy.txt"]


def test_mirror_missing_file_names_expected_path(tmp_path):
    (tmp_path / "mirror").mkdir()
    with pytest.raises(DataError, match=f"{tmp_path / 'mirror' / 'toy.txt'}: not found in the mirror"):
        fetch_raw("toy", {"url": "http://x", "sha256": SHA}, "toy.txt", tmp_path / "raw", tmp_path / "mirror")


def test_mirror_checksum_mismatch_leaves_nothing(tmp_path, origin):
    raw_dir = tmp_path / "raw"
    with pytest.raises(DataError, match=f"toy.txt: sha256 is {SHA} but {WRONG} was expected"):
        fetch_raw("toy", {"url": "http://x", "sha256": WRONG}, "toy.txt", raw_dir, origin.parent)
    assert not raw_dir.exists()


def test_existing_file_with_wrong_checksum_is_kept_and_reported(tmp_path):
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    (raw_dir / "toy.txt").write_bytes(b"something else")
    actual = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(DataError, match=f"{raw_dir / 'toy.txt'}: sha256 is {actual} but {SHA} was expected"):
        fetch_raw("toy", {"url": "http://x", "sha256": SHA}, "toy.txt", raw_dir, None)
    assert (raw_dir / "toy.txt").read_bytes() == b"something else"


def test_manual_source_explains_where_to_get_and_put_the_file(tmp_path):
    source = {"manual": "accept the terms at https://www.yelp.com/dataset", "sha256": None}
    with pytest.raises(DataError) as err:
        fetch_raw("yelp", source, "review.json", tmp_path / "raw" / "yelp", None)
    message = str(err.value)
    assert "cannot be downloaded automatically" in message
    assert "https://www.yelp.com/dataset" in message
    assert str(tmp_path / "raw" / "yelp" / "review.json") in message


def test_manual_source_accepts_a_placed_file_or_a_mirror(tmp_path, origin):
    source = {"manual": "get it yourself", "sha256": None}
    dest = fetch_raw("toy", source, "toy.txt", tmp_path / "raw", origin.parent)
    assert dest.read_bytes() == CONTENT
    assert fetch_raw("toy", source, "toy.txt", tmp_path / "raw", None) == dest


def test_generator_source_is_the_callers_job(tmp_path):
    with pytest.raises(ValueError, match="generated"):
        fetch_raw("synthetic", {"generator": {"seed": 7}}, "synthetic.txt", tmp_path, None)


@pytest.mark.benchmark_data
def test_benchmark_files_from_mirror(tmp_path):
    sums = BENCH / "SHA256SUMS"
    if not sums.is_file():
        pytest.skip(f"{sums} not available")
    for line in sums.read_text().splitlines():
        sha, name = line.split()
        url = f"https://raw.githubusercontent.com/QinHsiu/MCLRec/main/dataset/{name[:-4]}/{name}"
        dest = fetch_raw(name, {"url": url, "sha256": sha}, name, tmp_path / name, BENCH)
        assert dest.stat().st_size == (BENCH / name).stat().st_size
