from __future__ import annotations

import pytest

from edgekit.data import load_dataset, load_splits
from edgekit.errors import DataError
from tests.conftest import write_jsonl


def test_jsonl_and_csv_with_selectable_fields(tmp_path):
    j = write_jsonl(tmp_path / "a.jsonl", [{"q": "where is my order", "intent": "order_status"}, {"q": "hi", "intent": "greet"}])
    ds = load_dataset(j, text_field="q", label_field="intent")
    assert ds.texts == ("where is my order", "hi") and ds.labels == ("order_status", "greet")
    c = tmp_path / "a.csv"
    c.write_text('utterance,intent\n"refund, please",refund\nhello,greet\n', encoding="utf-8")
    ds = load_dataset(c, text_field="utterance", label_field="intent")
    assert ds.texts == ("refund, please", "hello") and ds.label_set == ["greet", "refund"]


def test_unlabelled(tmp_path):
    j = write_jsonl(tmp_path / "u.jsonl", [{"text": "a"}, {"text": "b"}])
    assert load_dataset(j, label_field=None).labels == ()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", r"u\.jsonl:1: the file holds no examples"),
        (b'{"text": "a", "label": "x"}\n{"label": "y"}\n', r"u\.jsonl:2: missing text field 'text'"),
        (b'{"text": "a", "label": "x"}\n\n{"text": "b"}\n', r"u\.jsonl:3: missing label field 'label'"),
        (b'{"text": "a", "label": "x"}\n{"text": "\xff\xfe", "label": "y"}\n', r"u\.jsonl:2: not valid UTF-8"),
        (b'{"text": "a", "label": "x"}\n{"text": \n', r"u\.jsonl:2: not valid JSON"),
        (b'["a", "x"]\n', r"u\.jsonl:1: expected a JSON object"),
        (b'{"text": "  ", "label": "x"}\n', r"u\.jsonl:1: text field 'text' is empty"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path, content, expected):
    path = tmp_path / "u.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=expected):
        load_dataset(path)


def test_bad_csv_names_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nok,a\nno label here\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.csv:3: label field 'label' is empty|d\.csv:3: missing"):
        load_dataset(path)
    path.write_text("sentence,label\nok,a\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.csv:2: missing text field 'text' \(fields: sentence, label\)"):
        load_dataset(path)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "nope.jsonl")
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(DataError, match="cannot tell the format"):
        load_dataset(tmp_path / "x.txt")


def test_labels_unknown_to_training_name_the_line(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    val = write_jsonl(tmp_path / "val.jsonl", [{"text": "c", "label": "x"}, {"text": "d", "label": "z"}])
    with pytest.raises(DataError, match=r"val\.jsonl:2: label 'z' in the validation set does not occur in the training set"):
        load_splits(train, val)
    test = write_jsonl(tmp_path / "test.jsonl", [{"text": "e", "label": "w"}])
    good_val = write_jsonl(tmp_path / "v2.jsonl", [{"text": "c", "label": "x"}])
    with pytest.raises(DataError, match=r"test\.jsonl:1: label 'w' in the test set"):
        load_splits(train, good_val, test)


def test_training_needs_two_labels(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": "x"}])
    with pytest.raises(DataError, match="at least two labels"):
        load_splits(train, train)


def test_fingerprint_changes_with_content(tmp_path):
    a = load_dataset(write_jsonl(tmp_path / "a.jsonl", [{"text": "a", "label": "x"}]))
    b = load_dataset(write_jsonl(tmp_path / "b.jsonl", [{"text": "a", "label": "y"}]))
    assert a.fingerprint() != b.fingerprint()
