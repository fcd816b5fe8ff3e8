"""Models built by name: our MLP/CNN, torchvision and timm architectures, parameter and MAC counts."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from respkd.errors import RespkdError
from respkd.models import MLP, build_model, count_macs, count_parameters, list_models

MNIST = (1, 28, 28)


def test_registry_lists_own_models():
    assert {"mlp", "cnn"} <= set(list_models())


def test_mlp_structure_and_output_shape():
    model = build_model("mlp", 10, MNIST, hidden=[20, 30], dropout_input=0.2, dropout_hidden=0.5)
    assert isinstance(model, MLP)
    linears = [m for m in model.features if isinstance(m, nn.Linear)] + [model.classifier]
    assert [(l.in_features, l.out_features) for l in linears] == [(784, 20), (20, 30), (30, 10)]
    assert model.constrained == linears[:2]
    dropouts = [m.p for m in model.features if isinstance(m, nn.Dropout)]
    assert dropouts == [0.2, 0.5, 0.5]
    assert model(torch.zeros(3, *MNIST)).shape == (3, 10)


def test_mlp_without_dropout_has_no_dropout_layers():
    model = build_model("mlp", 10, MNIST, hidden=[8])
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())


def test_parameter_count_of_paper_student():
    model = build_model("mlp", 10, MNIST, hidden=[800, 800])
    expected = (784 * 800 + 800) + (800 * 800 + 800) + (800 * 10 + 10)
    assert expected == 1_276_810
    assert count_parameters(model) == expected


def test_count_macs_of_linear_only_mlp_is_sum_of_in_out_products():
    model = build_model("mlp", 10, MNIST, hidden=[40, 24])
    assert count_macs(model, MNIST) == 784 * 40 + 40 * 24 + 24 * 10
    # count_macs leaves the model's mode as it was
    model.train()
    count_macs(model, MNIST)
    assert model.training


def test_max_norm_constraint():
    torch.manual_seed(0)
    model = build_model("mlp", 10, (1, 4, 4), hidden=[6, 5], max_norm=0.5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(50.0)  # every row far above the bound
        small_row = model.constrained[0].weight[0].clone() / model.constrained[0].weight[0].norm() * 0.1
        model.constrained[0].weight[0] = small_row  # one row already within the bound: left untouched
    classifier_before = model.classifier.weight.clone()
    hidden_before = [l.weight.clone() for l in model.constrained]
    model.apply_constraints()
    assert len(model.constrained) == 2
    for layer, before in zip(model.constrained, hidden_before):
        norms = layer.weight.norm(dim=1)
        assert (norms <= 0.5 + 1e-5).all(), norms
        # rescaled, not clipped element-wise: the direction of each row is kept
        cos = nn.functional.cosine_similarity(layer.weight, before, dim=1)
        assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)
    torch.testing.assert_close(model.constrained[0].weight[0], small_row)
    assert torch.equal(model.classifier.weight, classifier_before)  # only hidden units are constrained


def test_no_max_norm_leaves_weights_alone():
    model = build_model("mlp", 10, (1, 4, 4), hidden=[6])
    with torch.no_grad():
        model.constrained[0].weight.mul_(100.0)
    before = model.constrained[0].weight.clone()
    model.apply_constraints()
    assert torch.equal(model.constrained[0].weight, before)


def test_cnn_builds_and_runs():
    model = build_model("cnn", 10, (1, 12, 12), channels=[4, 8])
    assert model(torch.zeros(2, 1, 12, 12)).shape == (2, 10)
    assert count_macs(model, (1, 12, 12)) > 0


def test_torchvision_resnet18_with_one_input_channel():
    model = build_model("torchvision.resnet18", 7, (1, 32, 32))
    assert model.conv1.in_channels == 1
    assert model.fc.out_features == 7
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 7)


def test_torchvision_three_channels_unchanged():
    model = build_model("torchvision.resnet18", 4, (3, 32, 32))
    assert model.conv1.in_channels == 3


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm not installed")
def test_timm_resnet18_with_one_input_channel():
    model = build_model("timm.resnet18", 5, (1, 32, 32))
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 5)
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 1


@pytest.mark.parametrize("name", ["resnet", "mlpp", "torchvision.not_a_net", "timm.not_a_net", "torchvision."])
def test_unknown_model_name_is_an_error(name):
    if name.startswith("timm.") and importlib.util.find_spec("timm") is None:
        pytest.skip("timm not installed")
    with pytest.raises(RespkdError, match="unknown"):
        build_model(name, 10, MNIST)


def test_unknown_model_lists_choices():
    with pytest.raises(RespkdError, match="mlp") as info:
        build_model("resnet", 10, MNIST)
    assert "'resnet'" in str(info.value)


def test_misspelt_model_option_names_it():
    with pytest.raises(RespkdError, match="hiden") as info:
        build_model("mlp", 10, MNIST, hiden=[8])
    assert "mlp" in str(info.value)
    assert "hidden" in str(info.value).replace("hiden", "")  # suggests the right spelling


def test_misspelt_torchvision_option_is_an_error():
    with pytest.raises(RespkdError, match="zero_init_residuall"):
        build_model("torchvision.resnet18", 10, (1, 32, 32), zero_init_residuall=True)


def test_cnn_blocks_are_bounded_by_what_the_input_allows():
    """Each block after the first halves the resolution: 28 -> 14 -> 7 -> 3 -> 1 takes 5 blocks, a 6th has no pixel."""
    assert build_model("cnn", 10, (1, 28, 28), channels=[4] * 5)(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(RespkdError, match="28-pixel inputs allow at most 5"):
        build_model("cnn", 10, (1, 28, 28), channels=[4] * 6)
    assert build_model("cnn", 10, (3, 32, 32), channels=[4] * 6)(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("options, fragment", [
    ({"hidden": [0]}, "'hidden' widths must be from 1 to 65536, got 0"),
    ({"hidden": [65537]}, "got 65537"),
    ({"hidden": [True]}, "must be a list of integers"),
    ({"hidden": "8"}, "must be a list of integers"),
    ({"dropout_input": 1}, "'dropout_input' must be a number from 0 to below 1, got 1"),
    ({"dropout_hidden": float("nan")}, "got nan"),
    ({"max_norm": 0.0}, "'max_norm' must be above 0"),
    ({"max_norm": 1001}, "from 0 to 1000"),
])
def test_mlp_options_have_ranges(options, fragment):
    with pytest.raises(RespkdError, match=r"^model 'mlp': ") as info:
        build_model("mlp", 10, (1, 28, 28), **options)
    assert fragment in str(info.value)


def test_mlp_options_at_their_bounds_build():
    model = build_model("mlp", 10, (1, 4, 4), hidden=[1, 3], dropout_input=0.0, dropout_hidden=0.99, max_norm=1000)
    assert [m.out_features for m in model.features if isinstance(m, nn.Linear)] == [1, 3]
    assert build_model("mlp", 10, (1, 4, 4), hidden=[]).classifier.in_features == 16  # no hidden layer: linear
