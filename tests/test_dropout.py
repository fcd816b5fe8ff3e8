"""PackedDropout: torch's dropout semantics with CPU masks cut from 64-bit random words (16 bits per element)."""

from __future__ import annotations

import pytest
import torch

from respkd.models import PackedDropout, build_model, dropout_keep_mask


@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_keep_fraction_is_one_minus_p(p):
    torch.manual_seed(0)
    n = 1_000_000
    kept = dropout_keep_mask((n,), p).double().mean().item()
    sigma = ((1 - p) * p / n) ** 0.5
    assert abs(kept - (1 - p)) < 5 * sigma


def test_chunks_of_one_word_are_independent():
    """The four elements cut from one word, and neighbouring words, are uncorrelated."""
    torch.manual_seed(1)
    keep = dropout_keep_mask((250_000, 4), 0.5).double()
    corr = torch.corrcoef(keep.T)
    off_diagonal = corr[~torch.eye(4, dtype=torch.bool)]
    assert off_diagonal.abs().max() < 0.01  # 5 sigma of 1/sqrt(250000) is 0.01
    next_word = torch.corrcoef(torch.stack([keep[:-1, 0], keep[1:, 0]]))[0, 1]
    assert abs(next_word) < 0.01


def test_odd_sizes_and_shapes():
    torch.manual_seed(2)
    for shape in [(1,), (3,), (5, 7), (2, 3, 5)]:
        assert dropout_keep_mask(shape, 0.5).shape == shape


def test_output_is_zero_or_scaled_input_and_gradient_is_the_same_mask():
    torch.manual_seed(3)
    layer = PackedDropout(0.2).train()
    x = torch.randn(64, 50, requires_grad=True)
    y = layer(x)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.8)
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / 0.8)
    assert 0.6 < kept.float().mean() < 0.95


def test_bf16_input_stays_bf16():
    torch.manual_seed(4)
    x = torch.randn(8, 16).bfloat16()
    assert PackedDropout(0.5).train()(x).dtype == torch.bfloat16


def test_eval_mode_and_zero_p_are_identity():
    x = torch.randn(4, 6)
    assert torch.equal(PackedDropout(0.5).eval()(x), x)
    assert torch.equal(PackedDropout(0.0).train()(x), x)


def test_masks_follow_the_default_generator():
    """Same seed, same masks; the draw advances torch's default generator (what resume saves and restores)."""
    layer = PackedDropout(0.5).train()
    x = torch.ones(10, 10)
    torch.manual_seed(5)
    first = layer(x)
    state = torch.get_rng_state()
    second = layer(x)
    torch.manual_seed(5)
    assert torch.equal(layer(x), first)
    torch.set_rng_state(state)
    assert torch.equal(layer(x), second)
    assert not torch.equal(first, second)


def test_models_use_it():
    mlp = build_model("mlp", 10, (1, 28, 28), hidden=[8], dropout_input=0.2, dropout_hidden=0.5)
    cnn = build_model("cnn", 10, (1, 28, 28), channels=[4], dropout=0.3)
    assert sum(isinstance(m, PackedDropout) for m in mlp.modules()) == 2
    assert sum(isinstance(m, PackedDropout) for m in cnn.modules()) == 1
