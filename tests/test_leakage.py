"""Leakage guard, by interaction position: training never sees a user's validation or test interaction."""

import numpy as np
import pytest

from mclrec.data.preprocess import preprocess
from mclrec.data.processed import load_processed, padded_inputs, prefix_instances, sequence_instances


@pytest.fixture(scope="module")
def full_sequences(tiny_dir, tmp_path_factory):
    """Each user's whole chronological sequence, taken from the test split of the same raw file processed with an
    unbounded max_len (test input i1..i(L-1) + target iL), i.e. independently of the train split under test."""
    out = tmp_path_factory.mktemp("full") / "processed"
    preprocess(tiny_dir.parent / "raw.txt", "seqtxt", 5, 5, 10_000, out)
    test = load_processed(out).test
    return [np.r_[test.items[test.offsets[u]:test.offsets[u + 1]], test.targets[u]] for u in range(len(test.users))]


def test_instances_use_only_positions_before_validation(tiny, full_sequences):
    max_len = tiny.max_len
    seqs = full_sequences
    inputs, lengths, targets, users = prefix_instances(tiny.train, max_len)
    # every prefix instance predicts a position 1..L-3 (0-based) from the items before it; none is L-2 or L-1
    expected = [(u, t) for u, s in enumerate(seqs) for t in range(1, len(s) - 2)]
    assert len(expected) == len(targets)
    for row, (u, t) in enumerate(expected):
        s = seqs[u]
        assert targets[row] == s[t] and users[row] == tiny.train.users[u]
        assert inputs[row, :lengths[row]].tolist() == s[max(0, t - max_len):t].tolist()


def test_sequence_instances_stop_before_validation(tiny, full_sequences):
    inputs, lengths, nexts, _ = sequence_instances(tiny.train, tiny.max_len)
    for u, s in enumerate(full_sequences):  # the original SASRec's rows: inputs s[:L-3], next items s[1:L-2]
        n = lengths[u]
        assert inputs[u, :n].tolist() == s[: len(s) - 3][-n:].tolist()
        assert nexts[u, :n].tolist() == s[1: len(s) - 2][-n:].tolist()


def test_eval_inputs_end_right_before_their_target(tiny, full_sequences):
    max_len = tiny.max_len
    seqs = full_sequences
    for split, cut in (("valid", 2), ("test", 1)):
        seq, lens, tgt, _ = padded_inputs(getattr(tiny, split), max_len)
        for u, s in enumerate(seqs):
            assert seq[u, :lens[u]].tolist() == s[: len(s) - cut][-max_len:].tolist()
            assert tgt[u] == s[len(s) - cut]


def test_repeated_items_are_split_by_position(tmp_path):
    raw = tmp_path / "raw.txt"
    raw.write_text("1 5 6 5 7 5 8\n2 6 5 8 5\n")
    preprocess(raw, "seqtxt", 3, 1, 3, tmp_path / "out")
    data = load_processed(tmp_path / "out")
    # items remapped by first appearance: 5->1, 6->2, 7->3, 8->4
    inputs, lengths, targets, users = prefix_instances(data.train, 3)
    rows = [(int(u), inputs[i, :lengths[i]].tolist(), int(targets[i])) for i, u in enumerate(users)]
    assert rows == [(1, [1], 2), (1, [1, 2], 1), (1, [1, 2, 1], 3), (2, [2], 1)]
    seq, lens, tgt, _ = padded_inputs(data.valid, 3)
    assert seq[0, :lens[0]].tolist() == [2, 1, 3] and tgt[0] == 1  # the 3rd "5", position 4
    seq, lens, tgt, _ = padded_inputs(data.test, 3)
    assert seq[0, :lens[0]].tolist() == [1, 3, 1] and tgt[0] == 4
    assert seq[1, :lens[1]].tolist() == [2, 1, 4] and tgt[1] == 1
