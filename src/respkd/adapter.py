"""Feed a teacher the inputs it was trained on when they differ from the student's: another normalisation,
another resolution, RGB instead of grey.

The student's batches are ``(pixels / 255 - mean_s) / std_s`` at the dataset's size. A teacher trained elsewhere (a
torchvision ResNet on ImageNet statistics at 224 px, say) expects ``(pixels / 255 - mean_t) / std_t`` at its own
size. :class:`TeacherInputAdapter` converts one into the other: undo the student's normalisation, resize (bilinear,
antialiased, as torchvision's transforms do), repeat a grey channel to three, apply the teacher's normalisation.

It sits in front of the frozen teacher (:class:`AdaptedTeacher`), so everything downstream sees one module mapping
the student's batch to logits: the Distiller, its response-shape check, and the teacher cache, whose key records
:meth:`TeacherInputAdapter.spec` because the adapter changes what the teacher answers.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from respkd.config import TeacherInputConfig
from respkd.errors import RespkdError

__all__ = ["AdaptedTeacher", "TeacherInputAdapter", "build_adapter"]


class TeacherInputAdapter(nn.Module):
    """Student batch ``(N, C_s, H, W)`` -> teacher input ``(N, C_t, *size)``.

    Args:
        student_mean, student_std: the normalisation the student's batches carry (per channel, ``C_s`` values).
        teacher_mean, teacher_std: the teacher's (``C_t`` values; ``C_t`` is ``C_s``, or 3 when ``C_s`` is 1).
        size: the teacher's ``(height, width)``; None keeps the student's.
    """

    def __init__(
        self,
        student_mean: Sequence[float],
        student_std: Sequence[float],
        teacher_mean: Sequence[float],
        teacher_std: Sequence[float],
        size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        c_s, c_t = len(student_mean), len(teacher_mean)
        if len(student_std) != c_s or len(teacher_std) != c_t:
            raise RespkdError("teacher input adapter: mean and std need one value per channel")
        if c_t != c_s and c_s != 1:
            raise RespkdError(f"teacher input adapter: the teacher takes {c_t} channels and the student's inputs "
                              f"have {c_s}; only a grey channel can be repeated (to {c_t})")
        self.student_mean, self.student_std = list(map(float, student_mean)), list(map(float, student_std))
        self.teacher_mean, self.teacher_std = list(map(float, teacher_mean)), list(map(float, teacher_std))
        self.size = None if size is None else (int(size[0]), int(size[1]))
        # Non-persistent buffers: they follow .to(device) but are no part of any state dict (nothing to load).
        for name, values in (("s_mean", student_mean), ("s_std", student_std), ("t_mean", teacher_mean),
                             ("t_std", teacher_std)):
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32).view(-1, 1, 1), persistent=False)

    @property
    def channels(self) -> int:
        """Channels of the teacher's input."""
        return len(self.teacher_mean)

    def out_shape(self, in_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """``(C, H, W)`` of the teacher's input for a student input of ``in_shape``."""
        return (self.channels, *(self.size or in_shape[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x * self.s_std + self.s_mean  # back to pixels / 255, in [0, 1]
        if self.size is not None and tuple(pixels.shape[-2:]) != self.size:
            # Before the channel repeat: resizing acts on each channel alone, so one grey channel is a third of
            # the work. Antialiasing matters when shrinking (without it, bilinear skips pixels and aliases).
            pixels = TF.resize(pixels, list(self.size), interpolation=InterpolationMode.BILINEAR, antialias=True)
        if pixels.shape[1] != self.channels:
            pixels = pixels.expand(-1, self.channels, -1, -1)  # grey -> RGB: the same value in every channel
        return (pixels - self.t_mean) / self.t_std

    def spec(self) -> dict[str, Any]:
        """The settings, as JSON: recorded in summary.json and in the teacher cache's key."""
        return {"student_mean": self.student_mean, "student_std": self.student_std, "mean": self.teacher_mean,
                "std": self.teacher_std, "size": None if self.size is None else list(self.size),
                "resize": "bilinear, antialias"}

    def extra_repr(self) -> str:
        size = "the student's size" if self.size is None else f"{self.size[0]}x{self.size[1]}"
        return (f"mean {self.student_mean} std {self.student_std} -> mean {self.teacher_mean} std "
                f"{self.teacher_std}, {size}")


class AdaptedTeacher(nn.Module):
    """``model(adapter(x))``: a teacher that takes the student's batches. A submodule ``name`` of the teacher is
    ``model.<name>`` here (what :func:`respkd.teacher.load_teacher` gives the Distiller for ``kd.teacher_response``)."""

    def __init__(self, adapter: TeacherInputAdapter, model: nn.Module) -> None:
        super().__init__()
        self.adapter, self.model = adapter, model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.adapter(x))


def build_adapter(
    cfg: TeacherInputConfig, student_mean: Sequence[float], student_std: Sequence[float]
) -> TeacherInputAdapter:
    """The adapter a config's ``teacher.input`` asks for; what it leaves out stays as the student's."""
    mean = cfg.mean if cfg.mean is not None else student_mean
    std = cfg.std if cfg.std is not None else student_std
    size = None if cfg.size is None else ((cfg.size, cfg.size) if isinstance(cfg.size, int) else tuple(cfg.size))
    return TeacherInputAdapter(student_mean, student_std, mean, std, size)
