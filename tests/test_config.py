"""Configs: YAML validated strictly, overrides, one-line errors that name the key, the shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from respkd.config import RunConfig, apply_override, config_to_dict, load_config, validate_config
from respkd.data.datasets import dataset_info
from respkd.errors import RespkdError
from respkd.models import build_model

from conftest import write_yaml

REPO = Path(__file__).resolve().parents[1]


def base() -> dict:
    return {"name": "t", "model": {"name": "mlp", "hidden": [8]}, "train": {"epochs": 1, "lr": 0.1}}


def kd_base() -> dict:
    return {**base(), "teacher": {"run": "teacher"}, "kd": {"temperature": 4}}


def error_of(raw: dict) -> str:
    with pytest.raises(RespkdError) as info:
        validate_config(raw, "cfg.yaml")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("cfg.yaml: ")
    return msg


def test_defaults():
    cfg = validate_config(base())
    assert cfg.seed == 0 and cfg.device == "cpu"
    assert cfg.data.dataset == "mnist" and cfg.data.path is None and cfg.data.jitter == 0
    assert cfg.train.batch_size == 128 and cfg.train.schedule == "onecycle"
    assert not cfg.distills and cfg.kd is None
    assert validate_config(kd_base()).distills


def test_load_config_with_overrides(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", base())
    cfg = load_config(path, ["train.epochs=3", "model.hidden=[16, 16]", "data.jitter=2", "train.lr=0.05",
                             "train.milestones=[2, 4]", "data.path=/some/where", "train.nesterov=false"])
    assert cfg.train.epochs == 3
    assert cfg.model.options() == {"hidden": [16, 16]}
    assert cfg.data.jitter == 2
    assert cfg.train.lr == 0.05
    assert cfg.train.milestones == [2, 4]
    assert cfg.data.path == "/some/where"
    assert cfg.train.nesterov is False


def test_override_creates_missing_section(tmp_path):
    raw = base()
    apply_override(raw, "kd.temperature=2.5")
    apply_override(raw, "teacher.checkpoint=t.safetensors")
    cfg = validate_config(raw)
    assert cfg.kd.temperature == 2.5 and cfg.teacher.checkpoint == "t.safetensors"


@pytest.mark.parametrize("bad", ["train.epochs", "=3", "train.epochs=[1, 2"])
def test_bad_override(bad):
    with pytest.raises(RespkdError, match="override"):
        apply_override(base(), bad)


def test_override_through_a_value_is_an_error():
    with pytest.raises(RespkdError, match="not a section"):
        apply_override(base(), "name.sub=3")


def test_override_wrong_type_is_reported(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", base())
    with pytest.raises(RespkdError, match=r"'train\.epochs'.*'ten'"):
        load_config(path, ["train.epochs=ten"])


@pytest.mark.parametrize(
    "section,key,suggestion",
    [("train", "lrr", "lr"), ("train", "epoch", "epochs"), ("data", "jiter", "jitter"), (None, "seeds", "seed"),
     ("kd", "temprature", "temperature")],
)
def test_unknown_key_names_it_and_suggests(section, key, suggestion):
    raw = kd_base()
    if section is None:
        raw[key] = 1
        loc = key
    else:
        raw.setdefault(section, {})[key] = 1
        loc = f"{section}.{key}"
    msg = error_of(raw)
    assert f"unknown key '{loc}'" in msg
    assert f"did you mean '{suggestion}'" in msg


def test_unknown_key_without_close_match_has_no_suggestion():
    raw = base()
    raw["train"]["zzzzzz"] = 1
    msg = error_of(raw)
    assert "unknown key 'train.zzzzzz'" in msg and "did you mean" not in msg


def test_lr_rate_suggests_lr():
    raw = base()
    raw["train"]["lr_rate"] = 0.1
    assert "did you mean 'lr'" in error_of(raw)


@pytest.mark.parametrize(
    "path,value,fragment",
    [
        (("train", "epochs"), "ten", "'train.epochs'"),
        (("train", "epochs"), 1.5, "'train.epochs'"),
        (("train", "lr"), "0.1", "'train.lr'"),
        (("train", "epochs"), 0, "'train.epochs'"),
        (("data", "dataset"), "svhn", "'data.dataset'"),
        (("data", "jitter"), 9, "'data.jitter'"),
        (("train", "nesterov"), "yes", "'train.nesterov'"),
        (("name",), "has space", "'name'"),
    ],
)
def test_wrong_type_or_value_names_the_key(path, value, fragment):
    raw = base()
    node = raw
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    msg = error_of(raw)
    assert fragment in msg
    assert repr(value) in msg


@pytest.mark.parametrize("t", [0, -1.0, 0.009])
def test_temperature_must_be_positive(t):
    raw = kd_base()
    raw["kd"]["temperature"] = t
    msg = error_of(raw)
    assert "'kd.temperature'" in msg and "greater than or equal to 0.01" in msg


def test_missing_required_keys():
    msg = error_of({"name": "x", "model": {"name": "mlp"}, "train": {"lr": 0.1}})
    assert "missing key 'train.epochs'" in msg
    msg = error_of({"name": "x", "train": {"epochs": 1, "lr": 0.1}})
    assert "missing key 'model'" in msg


def test_several_problems_on_one_line():
    raw = base()
    raw["train"]["epochs"] = "ten"
    raw["train"]["lrr"] = 1
    msg = error_of(raw)
    assert "'train.epochs'" in msg and "'train.lrr'" in msg and "; " in msg


@pytest.mark.parametrize("drop", ["teacher", "kd"])
def test_teacher_and_kd_go_together(drop):
    raw = kd_base()
    del raw[drop]
    assert "'teacher' and 'kd' go together" in error_of(raw)


@pytest.mark.parametrize("teacher", [{}, {"run": "a", "checkpoint": "b.safetensors"}])
def test_teacher_needs_exactly_one_source(teacher):
    raw = kd_base()
    raw["teacher"] = teacher
    assert "exactly one of 'checkpoint' or 'run'" in error_of(raw)


def test_model_extra_options_reach_the_factory():
    raw = base()
    raw["model"] = {"name": "mlp", "hidden": [7, 5], "dropout_input": 0.1, "max_norm": 2.0}
    cfg = validate_config(raw)
    assert cfg.model.options() == {"hidden": [7, 5], "dropout_input": 0.1, "max_norm": 2.0}
    model = build_model(cfg.model.name, 10, (1, 28, 28), **cfg.model.options())
    assert [l.out_features for l in model.constrained] == [7, 5]
    assert model.max_norm == 2.0


def test_misspelt_model_option_is_an_error_naming_it():
    raw = base()
    raw["model"] = {"name": "mlp", "hiddden": [8]}
    cfg = validate_config(raw)  # the model section is open: its factory checks the options
    with pytest.raises(RespkdError, match="hiddden"):
        build_model(cfg.model.name, 10, (1, 28, 28), **cfg.model.options())


def test_config_is_frozen():
    cfg = validate_config(base())
    with pytest.raises(Exception):
        cfg.train.epochs = 5  # type: ignore[misc]


def test_config_round_trips_through_dict():
    cfg = validate_config(kd_base())
    again = validate_config(config_to_dict(cfg))
    assert again == cfg
    assert config_to_dict(again) == config_to_dict(cfg)


def test_load_config_file_errors(tmp_path):
    with pytest.raises(RespkdError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain: [epochs: 1\n")
    with pytest.raises(RespkdError, match="invalid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(RespkdError, match="mapping"):
        load_config(scalar)


def test_yaml_tags_are_not_executed(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(RespkdError, match="invalid YAML"):
        load_config(evil)


SHIPPED = sorted(p for p in (REPO / "configs").glob("*/*.yaml") if p.parent.name != "plans")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_configs_validate(path):
    """Every shipped config is valid and builds its model: run configs, and specialists configs (specialists*.yaml)."""
    if path.name.startswith("specialists"):
        from respkd.specialists.config import SpecialistsConfig, load_specialists_config

        assert isinstance(load_specialists_config(path), SpecialistsConfig)
        return
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    info = dataset_info(cfg.data.dataset)
    classes = len(info.class_names) or 1000  # ImageNet's classes are its folders, unknown until read
    build_model(cfg.model.name, classes, info.image_shape, **cfg.model.options())


# ---------------------------------------------------------------- every number in a config has a range

FULL_TRAIN = {"epochs": 2, "batch_size": 8, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "warmup_fraction": 0.3,
              "milestones": [1], "gamma": 0.1, "checkpoint_every_steps": 5,
              "max_skipped_steps": 3}
# Every numeric field of its kind given a valid value (test_every_numeric_field_is_in_its_base checks that).
RUN_FULL = {
    "name": "t", "seed": 1, "threads": 2, "model": {"name": "mlp"}, "init": {"run": "a"}, "train": FULL_TRAIN,
    "data": {"jitter": 2, "jitter_views": 4, "workers": 1, "train_limit": 100, "test_limit": 100, "val_size": 10,
             "val_seed": 1, "transfer": {"drop_classes": [3], "fraction": 0.5, "seed": 1},
             # one's own images: the dataset that takes every data key
             "dataset": "folder", "path": "images", "image_size": 8, "test_fraction": 0.2, "split_seed": 1,
             "mean": [0.5], "std": [0.5]},
    "teacher": {"run": "b", "input": {"mean": [0.5], "std": [0.5], "size": 28}},
    "kd": {"temperature": 4.0, "soft_weight": 1.0, "hard_weight": 0.5, "cache": True, "cache_topk": 3},
}
SPECIALISTS_FULL = {
    "name": "s", "seed": 1, "threads": 2, "generalist": {"run": "g"},
    "subsets": {"count": 2, "max_size": 5, "min_size": 1, "partners": 1, "n_init": 2, "seed": 1},
    "specialist": {"subset_fraction": 0.5, "jitter": 1, "train": FULL_TRAIN,
                   "soft_targets": {"temperature": 2.0, "soft_weight": 1.0, "hard_weight": 1.0}},
    "combine": {"top_n": 1, "steps": 10, "lr": 0.3, "tol": 1e-6},
}
STAGES_FULL = {
    "run": {"config": "c.yaml", "seeds": [0, 1]},
    "sweep": {"kind": "sweep", "config": "c.yaml", "temperatures": [2.0], "hidden": [[8]]},
    "bias": {"kind": "bias", "run": "r", "classes": [3], "search": True, "low": -5.0, "high": 5.0, "step": 0.5},
    "specialists": {"kind": "specialists", "config": "s.yaml", "workers": 2},
    "ensemble_eval": {"kind": "ensemble_eval", "name": "e", "runs": ["a", "b"], "temperature": 2.0},
}
# Numbers that exclude a key of the bases: setting one removes that key; with its valid value here.
EXCLUSIVE = {"keep_classes": ("drop_classes", [7]), "shift": ("search", 1.0)}
# The settings of one response loss, which the other losses refuse: their base is RUN_FULL with that loss.
LOSS_FULL = {key: {**RUN_FULL, "kd": {**RUN_FULL["kd"], "loss": key, key: params}} for key, params in
             (("dkd", {"alpha": 1.0, "beta": 8.0, "warmup_epochs": 20}), ("dist", {"beta": 1.0, "gamma": 1.0}))}


def numeric_fields(model, prefix: tuple = ()) -> list[tuple[tuple, type, int]]:
    """(path, int or float, list depth) of every number under pydantic ``model``, its sections followed."""
    import typing

    from pydantic import BaseModel

    def kinds(annotation, depth: int = 0):
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            yield from kinds(typing.get_args(annotation)[0], depth)
        elif origin is list:
            yield from kinds(typing.get_args(annotation)[0], depth + 1)
        elif origin in (typing.Union, getattr(__import__("types"), "UnionType")):
            for arg in typing.get_args(annotation):
                yield from kinds(arg, depth)
        elif annotation in (int, float):
            yield annotation, depth
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield annotation, depth

    found = []
    for name, field in model.model_fields.items():
        for kind, depth in kinds(field.annotation):
            if kind in (int, float):
                found.append(((*prefix, name), kind, depth))
            elif name != "model":  # a model section's options are its factory's to check (tests/test_models.py)
                found.extend(numeric_fields(kind, (*prefix, name)))
    return found


def _validators():
    from pydantic import ValidationError

    from respkd.plan import STAGE_TYPES, Plan
    from respkd.specialists.config import SpecialistsConfig

    def plan(raw):
        Plan.model_validate(raw)

    cases = [(RunConfig, RUN_FULL, RunConfig.model_validate), (SpecialistsConfig, SPECIALISTS_FULL,
                                                                 SpecialistsConfig.model_validate)]
    cases += [(cls, {"title": "t", "runs_root": "r", "stages": [STAGES_FULL[kind]]}, plan) for kind, cls in
              STAGE_TYPES.items()]
    return cases, ValidationError


def _set(raw: dict, path: tuple, value) -> dict:
    import copy

    raw = copy.deepcopy(raw)
    node = raw
    for part in path[:-1]:
        node = node[part]
    node.pop(EXCLUSIVE.get(path[-1], (None,))[0], None)
    node[path[-1]] = value
    return raw


def _fields_with_bases():
    cases, _ = _validators()
    out = []
    for model, full, validate in cases:
        prefix = ("stages", 0) if "stages" in full else ()
        for path, kind, depth in numeric_fields(model, ()):
            base = LOSS_FULL[path[1]] if model is RunConfig and path[:2] in (("kd", "dkd"), ("kd", "dist")) else full
            out.append((prefix + path, kind, depth, base, validate))
    return out


def test_every_numeric_field_is_in_its_base():
    """The bases above give every number a valid value and validate: so a refusal below is the field's own."""
    cases, _ = _validators()
    for _, full, validate in cases:
        validate(full)
    fields = _fields_with_bases()
    assert len(fields) >= 60  # the walk found the sections' numbers (not a vacuous pass)
    for path, _, _, full, validate in fields:
        node = full
        for part in path[:-1]:
            node = node[part]
        assert path[-1] in node or path[-1] in EXCLUSIVE, path
        validate(_set(full, path, node[path[-1]] if path[-1] in node else EXCLUSIVE[path[-1]][1]))


HOSTILE_NUMBERS = [2**70, -(2**70), 1e300, -1e300, True, False, float("nan"), float("inf"), float("-inf"), "1"]


@pytest.mark.parametrize("value", HOSTILE_NUMBERS, ids=repr)
def test_every_numeric_field_refuses_hostile_numbers(value):
    """Every int and float of run configs, specialists configs and every plan stage kind has a lower and an upper
    bound (2**70 and -2**70, 1e300 and -1e300 are refused), is strict (a bool or a string is no number; a float is
    no int) and finite; lists of numbers too, item by item. A field added without a range fails here."""
    _, ValidationError = _validators()
    for path, kind, depth, full, validate in _fields_with_bases():
        for bad in [value, 1.5] if kind is int else [value]:
            for _ in range(depth):
                bad = [bad]
            with pytest.raises(ValidationError) as info:
                validate(_set(full, path, bad))
            assert path[-1] in str(info.value), (path, bad, str(info.value))


# ---------------------------------------------------------------- the YAML reader's bounds, at and past each one


def _limit_problem(text: str, loader=None) -> str | None:
    """None when ``text`` loads, else the bound it broke (YAMLLimitError) or the YAML error's problem."""
    import yaml

    from respkd.config import ConfigLoader, load_yaml

    try:
        load_yaml(text, loader=loader or ConfigLoader)
    except yaml.YAMLError as err:
        return str(getattr(err, "problem", None) or err)
    return None


def test_reader_accepts_each_bound_and_refuses_one_past_it():
    from respkd.config import MAX_INT_LENGTH, MAX_KEY_LENGTH, MAX_YAML_DEPTH

    # the top-level mapping is level 1, so its value may nest MAX_YAML_DEPTH - 1 levels
    assert _limit_problem("a: " + "[" * (MAX_YAML_DEPTH - 1) + "]" * (MAX_YAML_DEPTH - 1)) is None
    assert "nested deeper than 32" in _limit_problem("a: " + "[" * MAX_YAML_DEPTH + "]" * MAX_YAML_DEPTH)
    assert _limit_problem(f"? {'k' * MAX_KEY_LENGTH}\n: 1\n") is None
    assert "a key of 129 characters" in _limit_problem(f"? {'k' * (MAX_KEY_LENGTH + 1)}\n: 1\n")
    assert _limit_problem("a: " + "9" * MAX_INT_LENGTH) is None
    assert "an integer of 101" in _limit_problem("a: " + "9" * (MAX_INT_LENGTH + 1))
    assert _limit_problem("a: '" + "9" * 10_000 + "'") is None  # a long string is no integer
    assert _limit_problem("".join(f"k{i}: 1\n" for i in range(10_000))) is None
    assert "more than 10000 keys" in _limit_problem("".join(f"k{i}: 1\n" for i in range(10_001)))


def test_reader_values_bound_counts_every_node_and_alias_use(monkeypatch):
    from respkd import config

    loader = config.ConfigLoader("a: &a [1, 2, 3]\nb: *a\nc: *a\n")
    assert loader.get_single_data() == {"a": [1, 2, 3], "b": [1, 2, 3], "c": [1, 2, 3]}
    # root, then per entry its key and its value: a's list and its 3 items (4), each alias the same 4 again
    assert loader.values == 1 + (1 + 4) * 3
    monkeypatch.setattr(config, "MAX_YAML_VALUES", 1000)  # the bound's arithmetic, at a size quick to parse
    items = 1000 - 3  # the root mapping, the key and the list are values too
    assert _limit_problem("x: [" + "0," * items + "]") is None
    assert "more than 1000 values" in _limit_problem("x: [" + "0," * (items + 1) + "]")
    assert _limit_problem("a: &a [" + "0," * 496 + "]\nb: *a\n") is None  # root, a, list + 496, b, 497 again: 997
    assert "more than 1000 values" in _limit_problem("a: &a [" + "0," * 496 + "]\nb: *a\nc: *a\n")


def test_reader_keeps_anchors_that_stay_within_the_bounds():
    import yaml

    from respkd.config import load_yaml

    text = "base: &base {epochs: 2, lr: 0.1}\nstages:\n  - train: *base\n  - train: {<<: *base, lr: 0.05}\n"
    assert load_yaml(text)["stages"] == [{"train": {"epochs": 2, "lr": 0.1}}, {"train": {"epochs": 2, "lr": 0.05}}]
    with pytest.raises(yaml.YAMLError, match="duplicate key 'lr'"):  # a merge may be overridden, a key not repeated
        load_yaml("base: &base {lr: 0.1}\ntrain: {<<: *base, lr: 0.05, lr: 0.2}\n")


HOSTILE_YAML = {
    "deep-lists": "a: " + "[" * 5000 + "]" * 5000,
    "deep-maps": "a: " + "{a: " * 5000 + "1" + "}" * 5000,
    "deep-spaced-lists": "a: " + "[ " * 400 + "]" * 400,
    "laughs": "l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 9)),
    "recursive": "a: &a [1, *a]\n",
    "many-keys": "".join(f"k{i}: 1\n" for i in range(501)),  # the bound is 500 here (pure Python is slow)
    "long-key": f"? {'k' * 5000}\n: 1\n",
    "long-int": "a: " + "1" * 5000,
}


@pytest.mark.parametrize("name", HOSTILE_YAML)
def test_reader_bounds_hold_without_libyaml(name, monkeypatch):
    """PyYAML built without libyaml parses in Python (config.PythonYAMLEvents): the same bounds refuse the same
    documents, with no RecursionError; libyaml's own nesting limit may answer first (both are one-line errors)."""
    import yaml

    from respkd import config
    from respkd.config import BoundedComposer, PythonYAMLEvents, YAMLLimitError

    monkeypatch.setattr(config, "MAX_YAML_KEYS", 500)

    class PythonLoader(BoundedComposer, PythonYAMLEvents):
        def __init__(self, stream: str, max_depth: int) -> None:
            PythonYAMLEvents.__init__(self, stream)
            BoundedComposer.__init__(self, max_depth)

    from respkd.config import load_yaml

    for loader in (None, PythonLoader):
        with pytest.raises(yaml.YAMLError) as info:
            load_yaml(HOSTILE_YAML[name], **({"loader": loader} if loader else {}))
        assert isinstance(info.value, YAMLLimitError) or "nesting depth" in str(info.value), str(info.value)[:200]


def test_reader_gives_the_shipped_plans_unchanged():
    import yaml

    from respkd.config import load_yaml

    for path in sorted((REPO / "configs").glob("**/*.yaml")):
        assert load_yaml(path.read_text()) == yaml.safe_load(path.read_text()), path


def test_override_value_depth_counts_the_keys_above_it():
    raw: dict = {}
    apply_override(raw, "a.b=" + "[" * 30 + "]" * 30)  # root, a, b's value: 30 levels more makes 32
    with pytest.raises(RespkdError, match="nested deeper than 32 levels"):
        apply_override(raw, "a.b=" + "[" * 31 + "]" * 31)
    apply_override(raw, ".".join("k" * 31) + "=1")  # 30 sections below the root, the value at level 32
    with pytest.raises(RespkdError, match="nested deeper than 32 levels"):
        apply_override(raw, ".".join("k" * 32) + "=1")
    with pytest.raises(RespkdError, match=r"^override 'kkkkk.{35}\.\.\.': a key of 200 characters \(at most 128\)$"):
        apply_override(raw, "k" * 200 + "=1")


def test_error_line_lists_five_problems_then_how_many_more():
    raw = {**base(), **{f"unknown{i}": 1 for i in range(5000)}}
    msg = error_of(raw)
    assert msg.count("unknown key") == 5 and msg.endswith("; and 4995 more")

def test_response_loss_settings_default_to_the_authors():
    assert validate_config(kd_base()).kd.loss == "kd" and not validate_config(kd_base()).kd.standardize
    dkd = validate_config({**kd_base(), "kd": {"temperature": 4, "loss": "dkd"}}).kd
    assert (dkd.dkd.alpha, dkd.dkd.beta, dkd.dkd.warmup_epochs) == (1.0, 8.0, 20) and dkd.dist is None
    assert dkd.loss_params == {"alpha": 1.0, "beta": 8.0} and dkd.warmup_epochs == 20
    dist = validate_config({**kd_base(), "kd": {"temperature": 4, "loss": "dist", "dist": {"gamma": 2.0}}}).kd
    assert dist.loss_params == {"beta": 1.0, "gamma": 2.0} and dist.warmup_epochs == 0
    kd = validate_config(kd_base()).kd
    assert kd.loss_params == {} and kd.warmup_epochs == 0 and kd.dkd is None
    # only logit matching on unstandardized logits depends on a per-example shift of the teacher's logits
    raw = {loss: validate_config({**kd_base(), "kd": {"temperature": 4, "loss": loss}}).kd.reads_raw_logits
           for loss in ("kd", "logit_mse", "dkd", "dist")}
    assert raw == {"kd": False, "logit_mse": True, "dkd": False, "dist": False}
    assert not validate_config({**kd_base(), "kd": {"temperature": 4, "loss": "logit_mse",
                                                   "standardize": True}}).kd.reads_raw_logits


def test_filled_loss_settings_round_trip_and_old_configs_read_the_same():
    """The recorded config names the DKD values used; a config recorded before these keys existed validates to the
    same config as one with them (what lets a finished run be recognised as finished)."""
    cfg = validate_config({**kd_base(), "kd": {"temperature": 4, "loss": "dkd", "dkd": {"beta": 2.0}}})
    stored = config_to_dict(cfg)
    assert stored["kd"]["dkd"] == {"alpha": 1.0, "beta": 2.0, "warmup_epochs": 20}
    assert config_to_dict(validate_config(stored)) == stored
    old = config_to_dict(validate_config(kd_base()))
    for key in ("loss", "standardize", "dkd", "dist"):
        del old["kd"][key]
    assert config_to_dict(validate_config(old)) == config_to_dict(validate_config(kd_base()))


def test_loss_switched_by_an_override_keeps_its_parameters_checked(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {**kd_base(), "kd": {"temperature": 4, "loss": "dkd", "dkd": {"beta": 2}}})
    with pytest.raises(RespkdError, match="'dkd' settings are for 'loss: dkd', but loss is dist"):
        load_config(path, ["kd.loss=dist"])
    assert load_config(path, ["kd.dkd.warmup_epochs=0"]).kd.warmup_epochs == 0
