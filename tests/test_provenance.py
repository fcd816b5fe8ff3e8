"""The one way respkd decides that an output was made from the same inputs, and the JSON reader under it."""

from __future__ import annotations

import json

import pytest

from respkd.errors import RespkdError
from respkd.files import read_json
from respkd.provenance import differences, made_from, recorded_inputs, same_inputs, value_at


def test_differences_name_nested_keys_in_order():
    stored = {"train": {"lr": 0.1, "epochs": 3}, "seed": 0, "name": "a"}
    current = {"train": {"lr": 0.2, "epochs": 3}, "seed": 1, "name": "a"}
    assert differences(stored, current) == ["seed", "train.lr"]
    assert differences(stored, current, ignore=("train.lr",)) == ["seed"]
    assert value_at(stored, "train.lr") == 0.1 and value_at(stored, "train.nothing") is None


def test_a_key_one_side_lacks_counts_as_none():
    assert differences({"a": 1}, {"a": 1, "b": None}) == []
    assert differences({"a": 1}, {"a": 1, "b": 0}) == ["b"]
    assert differences([1, 2], [1, 3]) == [""]  # two values that are not mappings differ as a whole


def test_nothing_recorded_is_never_the_same():
    assert not same_inputs(None, {})
    assert same_inputs({"k": [1, 2]}, {"k": [1, 2]})


def test_made_from_reads_the_record_and_normalises_it(tmp_path):
    path = tmp_path / "out.json"
    assert not made_from(path, {"x": 1})  # no record
    path.write_text("{broken")
    assert not made_from(path, {"x": 1})  # unreadable: not finished, never an error
    path.write_text(json.dumps({"spec": {"x": 1}, "result": 5}))
    assert made_from(path, {"x": 1}) and not made_from(path, {"x": 2})
    # normalised before comparing: e.g. a default filled in that the old record lacks
    assert made_from(path, {"x": 1, "y": 3}, normalize=lambda spec: {**spec, "y": 3})

    def refuse(spec):
        raise KeyError("y")

    # inputs the normaliser cannot read are compared as stored (and so found different)
    assert recorded_inputs(path, normalize=refuse) == {"x": 1}
    assert not made_from(path, {"x": 1, "y": 3}, normalize=refuse)


@pytest.mark.parametrize("content,message", [
    (None, "summary {path} does not exist"),
    ("{broken", "{path}: not valid JSON (Expecting property name"),
    (b"\xff\xfe\x00", "{path}: not valid JSON ("),
])
def test_read_json_refuses_in_one_line(tmp_path, content, message):
    path = tmp_path / "summary.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(RespkdError) as err:
        read_json(path, "summary")
    assert str(err.value).startswith(message.format(path=path)) and "\n" not in str(err.value)


def test_read_json_returns_the_value(tmp_path):
    (tmp_path / "a.json").write_text('{"a": [1, 2.5, null]}')
    assert read_json(tmp_path / "a.json") == {"a": [1, 2.5, None]}
