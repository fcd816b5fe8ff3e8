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


@pytest.mark.parametrize("t", [0, -1.0])
def test_temperature_must_be_positive(t):
    raw = kd_base()
    raw["kd"]["temperature"] = t
    msg = error_of(raw)
    assert "'kd.temperature'" in msg and "greater than 0" in msg


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
