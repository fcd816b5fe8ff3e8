"""BatchLoader (order, jitter, drop_last, reproducibility), translate(), and the engine's evaluate/schedules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from respkd.config import TrainConfig
from respkd.data.memory import BatchLoader, jitter_offsets, translate
from respkd.engine import build_optimizer, build_scheduler, evaluate


def make_loader(n=23, batch_size=5, **kw) -> BatchLoader:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 6, 6).contiguous()
    labels = torch.arange(n) % 10
    return BatchLoader(images, labels, batch_size, (0.0,), (1.0,), **kw)


# ---------------------------------------------------------------- translate


@pytest.mark.parametrize("dy,dx", [(0, 0), (1, 0), (0, -1), (2, 2), (-2, 1), (-1, -2)])
def test_translate_moves_a_lit_pixel_exactly(dy, dx):
    img = torch.zeros(1, 1, 7, 9, dtype=torch.uint8)
    y, x = 3, 4
    img[0, 0, y, x] = 200
    out = translate(img, torch.tensor([[dy, dx]]), max_shift=2)
    assert out.shape == img.shape and out.dtype == torch.uint8
    expected = torch.zeros_like(img)
    expected[0, 0, y + dy, x + dx] = 200
    assert torch.equal(out, expected)


def test_translate_fills_zeros_and_each_image_has_its_own_shift():
    imgs = torch.full((3, 2, 4, 4), 9, dtype=torch.uint8)
    offsets = torch.tensor([[1, 0], [0, -2], [-1, 1]])
    out = translate(imgs, offsets, max_shift=2)
    # image 0 moved down by 1: top row zero, rest 9
    assert (out[0, :, 0] == 0).all() and (out[0, :, 1:] == 9).all()
    # image 1 moved left by 2: the two right columns zero
    assert (out[1, :, :, 2:] == 0).all() and (out[1, :, :, :2] == 9).all()
    # image 2 moved up 1 and right 1: bottom row and left column zero
    assert (out[2, :, 3] == 0).all() and (out[2, :, :, 0] == 0).all() and (out[2, :, :3, 1:] == 9).all()
    assert int((out[2] == 9).sum()) == 2 * 3 * 3


def test_translate_content_matches_roll_in_the_interior():
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(1, 255, (4, 1, 10, 10), dtype=torch.uint8, generator=g)
    offsets = jitter_offsets(4, 3, g)
    out = translate(imgs, offsets, 3)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        rolled = torch.roll(imgs[i], shifts=(dy, dx), dims=(1, 2))
        ys = slice(max(dy, 0), 10 + min(dy, 0))
        xs = slice(max(dx, 0), 10 + min(dx, 0))
        assert torch.equal(out[i][:, ys, xs], rolled[:, ys, xs])
        assert int((out[i] != 0).sum()) == (10 - abs(dy)) * (10 - abs(dx))


def test_translate_with_zero_max_shift_is_identity():
    imgs = torch.randint(0, 255, (2, 1, 5, 5), dtype=torch.uint8)
    assert translate(imgs, torch.zeros(2, 2, dtype=torch.long), 0) is imgs


def test_jitter_offsets_within_bounds_and_cover_range():
    off = jitter_offsets(5000, 2, torch.Generator().manual_seed(1))
    assert off.shape == (5000, 2)
    assert off.min() == -2 and off.max() == 2
    assert set(off[:, 0].tolist()) == {-2, -1, 0, 1, 2}


def test_jittered_batches_stay_within_bounds():
    """A single lit pixel per image lands at most `jitter` pixels from where it was."""
    n, size, j = 40, 12, 2
    images = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    images[:, 0, 6, 5] = 255
    loader = BatchLoader(images, torch.zeros(n, dtype=torch.long), 8, (0.0,), (1.0,), shuffle=True, jitter=j, seed=4)
    moves = set()
    for epoch in (1, 2):
        loader.set_epoch(epoch)
        for x, _, _ in loader:
            for img in x:
                lit = (img[0] > 0.5).nonzero().tolist()
                assert len(lit) == 1
                dy, dx = lit[0][0] - 6, lit[0][1] - 5
                assert abs(dy) <= j and abs(dx) <= j
                moves.add((dy, dx))
    assert len(moves) > 5  # really jittered, not a constant shift


# ---------------------------------------------------------------- order, epochs, drop_last


def epoch_indices(loader: BatchLoader, epoch: int) -> list[int]:
    loader.set_epoch(epoch)
    return torch.cat([idx for _, _, idx in loader]).tolist()


def test_every_example_once_per_epoch():
    loader = make_loader(n=23, batch_size=5, shuffle=True, seed=7)
    assert len(loader) == 5
    for epoch in (0, 1, 2):
        idx = epoch_indices(loader, epoch)
        assert sorted(idx) == list(range(23))


def test_batches_carry_matching_images_labels_and_indices():
    loader = make_loader(n=23, batch_size=5, shuffle=True, seed=7)
    for x, y, idx in loader:
        assert torch.equal(y, idx % 10)
        # image i is filled with the value i; mean 0, std 1 -> x = i / 255
        torch.testing.assert_close(x[:, 0, 0, 0], idx.float() / 255.0)
        assert x.dtype == torch.float32


def test_same_seed_and_epoch_same_order_different_epoch_differs():
    a = make_loader(n=50, batch_size=8, shuffle=True, seed=3)
    b = make_loader(n=50, batch_size=8, shuffle=True, seed=3)
    assert epoch_indices(a, 4) == epoch_indices(b, 4)
    assert epoch_indices(a, 4) == epoch_indices(a, 4)  # re-iterating an epoch repeats it
    assert epoch_indices(a, 4) != epoch_indices(a, 5)
    c = make_loader(n=50, batch_size=8, shuffle=True, seed=4)
    assert epoch_indices(c, 4) != epoch_indices(a, 4)


def test_same_seed_and_epoch_same_jitter():
    kw = dict(n=30, batch_size=7, shuffle=True, jitter=2, seed=1)
    a, b = make_loader(**kw), make_loader(**kw)
    images = torch.randint(0, 255, (30, 1, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    a.images = b.images = images
    a.set_epoch(2), b.set_epoch(2)
    for (xa, _, ia), (xb, _, ib) in zip(a, b):
        assert torch.equal(ia, ib) and torch.equal(xa, xb)


def per_example_inputs(loader: BatchLoader, epoch: int) -> dict[int, torch.Tensor]:
    loader.set_epoch(epoch)
    return {int(i): x_i for x, _, idx in loader for i, x_i in zip(idx, x)}


def test_jitter_views_repeat_per_example_across_epochs():
    images = torch.randint(1, 255, (30, 1, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(30, dtype=torch.long)
    loader = BatchLoader(images, labels, 7, (0.0,), (1.0,), shuffle=True, jitter=2, jitter_views=3, seed=5)
    assert [loader.view_of_epoch(e) for e in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    e1, e2, e4 = per_example_inputs(loader, 1), per_example_inputs(loader, 2), per_example_inputs(loader, 4)
    assert epoch_indices(loader, 1) != epoch_indices(loader, 4)  # a different order...
    assert all(torch.equal(e1[i], e4[i]) for i in e1)  # ...but each example has the same jitter in the same view
    assert any(not torch.equal(e1[i], e2[i]) for i in e1)
    free = BatchLoader(images, labels, 7, (0.0,), (1.0,), shuffle=True, jitter=2, seed=5)
    f1, f4 = per_example_inputs(free, 1), per_example_inputs(free, 4)
    assert any(not torch.equal(f1[i], f4[i]) for i in f1)  # without views every epoch draws anew


def test_no_shuffle_is_in_order():
    assert epoch_indices(make_loader(n=12, batch_size=5), 3) == list(range(12))


def test_drop_last():
    keep = make_loader(n=23, batch_size=5, drop_last=False)
    drop = make_loader(n=23, batch_size=5, drop_last=True, shuffle=True)
    assert len(keep) == 5 and [len(i) for _, _, i in keep] == [5, 5, 5, 5, 3]
    assert len(drop) == 4 and [len(i) for _, _, i in drop] == [5, 5, 5, 5]
    assert len(set(epoch_indices(drop, 1))) == 20
    exact = make_loader(n=20, batch_size=5, drop_last=True)
    assert len(exact) == 4 and len(epoch_indices(exact, 0)) == 20
    tiny = make_loader(n=3, batch_size=5, drop_last=True)
    assert len(tiny) == 0 and list(tiny) == []


def test_normalisation():
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    loader = BatchLoader(images, torch.zeros(2, dtype=torch.long), 2, (0.5,), (0.25,))
    x, _, _ = next(iter(loader))
    torch.testing.assert_close(x.flatten(), torch.tensor([-2.0, 2.0]))


def test_mismatched_lengths():
    with pytest.raises(ValueError):
        BatchLoader(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.zeros(2, dtype=torch.long), 2, (0.0,), (1.0,))


# ---------------------------------------------------------------- evaluate


class Constant(nn.Module):
    def __init__(self, cls: int, num_classes: int) -> None:
        super().__init__()
        self.cls, self.num_classes = cls, num_classes
        self.seen = 0

    def forward(self, x):
        self.seen += len(x)
        out = torch.zeros(len(x), self.num_classes)
        out[:, self.cls] = 1.0
        return out


def test_evaluate_counts_every_example_once():
    loader = make_loader(n=203, batch_size=50)  # 203 is not a multiple of 50
    model = Constant(0, 10)
    result = evaluate(model, loader, 10)
    labels = torch.arange(203) % 10
    assert result["n"] == 203 and model.seen == 203
    assert result["errors"] == int((labels != 0).sum())
    assert result["top1"] == pytest.approx(100.0 * int((labels == 0).sum()) / 203)
    assert sum(result["errors_per_class"]) == result["errors"]
    assert result["errors_per_class"][0] == 0 and result["errors_per_class"][3] == int((labels == 3).sum())


def test_evaluate_top1_top5_by_hand():
    # 7 classes, 4 examples; the model is the identity on the "inputs", which are the logits.
    logits = torch.tensor([
        [9.0, 8, 7, 6, 5, 4, 3],   # label 0: top-1 hit
        [9.0, 8, 7, 6, 5, 4, 3],   # label 4: rank 5 -> top-5 hit, top-1 miss
        [9.0, 8, 7, 6, 5, 4, 3],   # label 5: rank 6 -> miss both
        [0.0, 0, 0, 0, 0, 0, 1],   # label 6: top-1 hit
    ])
    labels = torch.tensor([0, 4, 5, 6])
    loader = [(logits[:3], labels[:3], torch.arange(3)), (logits[3:], labels[3:], torch.arange(3, 4))]
    result = evaluate(nn.Identity(), loader, 7)
    assert result["n"] == 4
    assert result["errors"] == 2
    assert result["top1"] == pytest.approx(50.0)
    assert result["top5"] == pytest.approx(75.0)
    assert result["errors_per_class"] == [0, 0, 0, 0, 1, 1, 0]
    expected_loss = nn.functional.cross_entropy(logits, labels).item()
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-6)


def test_evaluate_with_fewer_than_five_classes():
    logits = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    result = evaluate(nn.Identity(), [(logits, torch.tensor([0, 0]), torch.arange(2))], 3)
    assert result["top1"] == 50.0 and result["top5"] == 100.0


def test_evaluate_puts_model_in_eval_mode():
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.9), nn.Linear(36, 10)).train()
    loader = make_loader(n=10, batch_size=4)
    a = evaluate(model, loader, 10)
    b = evaluate(model, loader, 10)
    assert not model.training
    assert a == b  # dropout off: deterministic


# ---------------------------------------------------------------- schedules


def lrs(schedule: str, epochs: int, steps: int, **kw) -> list[float]:
    cfg = TrainConfig(epochs=epochs, lr=0.1, schedule=schedule, **kw)
    opt = build_optimizer(nn.Linear(2, 2), cfg)
    sched = build_scheduler(opt, cfg, steps)
    out = []
    for _ in range(epochs * steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_onecycle_peaks_at_lr():
    values = lrs("onecycle", 2, 20, warmup_fraction=0.25)
    assert max(values) == pytest.approx(0.1, rel=1e-3)
    assert values[0] < 0.01 and values[-1] < 0.001
    assert values.index(max(values)) == pytest.approx(0.25 * 40 - 1, abs=1)


def test_step_and_constant_schedules():
    values = lrs("step", 3, 4, milestones=[1, 2], gamma=0.5)
    assert values == pytest.approx([0.1] * 4 + [0.05] * 4 + [0.025] * 4)
    assert lrs("constant", 2, 3) == pytest.approx([0.1] * 6)
    cos = lrs("cosine", 1, 10)
    assert cos[0] == pytest.approx(0.1) and all(a > b for a, b in zip(cos, cos[1:]))


@pytest.mark.parametrize(
    "epochs,steps,warmup", [(1, 1, 0.3), (1, 2, 0.3), (1, 3, 0.3), (2, 2, 0.15), (1, 6, 0.15), (2, 5, 0.05)]
)
def test_onecycle_with_few_steps(epochs, steps, warmup):
    """A short run (e.g. 1 epoch of 3 batches) must not crash the schedule."""
    values = lrs("onecycle", epochs, steps, warmup_fraction=warmup)
    assert len(values) == epochs * steps and all(v > 0 for v in values)
