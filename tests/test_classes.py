"""Classes compared by name (respkd.classes): the line that names the first class that differs."""

from __future__ import annotations

import pytest

from respkd.classes import check_classes, class_mismatch, recorded_class_names
from respkd.errors import RespkdError


def test_the_first_differing_class_is_named():
    assert class_mismatch(["red", "green", "blue"], 3, ["red", "green", "blue"], "teacher", "data") is None
    assert class_mismatch(["red", "green", "blue"], 3, ["red", "green", "z"], "teacher", "data") == (
        "the teacher's class 2 is 'blue' but the data's class 2 is 'z'")
    # the same names in another order are other classes: label 0 would mean 'green' to one and 'red' to the other
    assert class_mismatch(["green", "red"], 2, ["red", "green"], "checkpoint", "data") == (
        "the checkpoint's class 0 is 'green' but the data's class 0 is 'red'")


def test_different_counts_name_the_class_too():
    assert class_mismatch(["a", "b", "c"], 3, ["a", "b", "c", "d"], "checkpoint", "data") == (
        "the checkpoint has 3 classes but the data has 4: the first 3 agree, and the data's class 3 is 'd'")
    assert class_mismatch(["a", "x", "c", "d"], 4, ["a", "b", "c"], "teacher", "data") == (
        "the teacher has 4 classes but the data has 3: the teacher's class 1 is 'x' but the data's class 1 is 'b'")


def test_checkpoints_without_names_are_compared_by_count():
    assert class_mismatch(None, 10, [str(d) for d in range(10)], "teacher", "data") is None
    assert class_mismatch(None, 4, ["a", "b", "c"], "teacher", "data") == (
        "the teacher has 4 classes but the data has 3 (the teacher records no class names, so only the counts are "
        "compared)")
    # names that cannot be the classes (not one per class, not strings) count as none
    assert recorded_class_names({"num_classes": 3, "class_names": ["a", "b"]}) is None
    assert recorded_class_names({"num_classes": 2, "class_names": ["a", 7]}) is None
    assert recorded_class_names({"num_classes": 2, "class_names": ["a", "b"]}) == ["a", "b"]


def test_check_classes_refuses_in_one_line_with_its_context():
    meta = {"num_classes": 2, "class_names": ["cat", "dog"]}
    check_classes(meta, ["cat", "dog"], "checkpoint")
    with pytest.raises(RespkdError) as info:
        check_classes(meta, ["cat", "doge"], "checkpoint", "data", "data: folder /pets")
    assert str(info.value) == "the checkpoint's class 1 is 'dog' but the data's class 1 is 'doge' (data: folder /pets)"
