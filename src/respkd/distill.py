"""Training tasks: a student learning from hard labels, or distilled from a frozen teacher.

Both are ``nn.Module``s whose ``forward(inputs, labels)`` returns a dict: ``loss`` (to back-propagate), the named
unweighted terms for logging, and ``logits`` (the student's output, for accuracy). The engine treats them alike.
"""

from __future__ import annotations

import torch
from torch import nn

from respkd.errors import RespkdError
from respkd.losses import check_loss, distillation_loss, hard_label_loss

__all__ = ["Distiller", "ResponseRecorder", "Supervised"]


class ResponseRecorder:
    """Keeps the latest output of the submodule ``name`` of ``model`` (a forward hook, as MMRazor's recorders).

    With ``name=None`` the response is the model's own output and no hook is installed.
    """

    def __init__(self, model: nn.Module, name: str | None) -> None:
        self.name = name
        self.output: torch.Tensor | None = None
        if name is not None:
            modules = dict(model.named_modules())
            if name not in modules:
                near = [m for m in modules if m and (name in m or m in name)][:5]
                raise RespkdError(f"no submodule '{name}' to record a response from" + (f" (near: {', '.join(near)})" if near else ""))
            modules[name].register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.output = output

    def response(self, model_output: torch.Tensor) -> torch.Tensor:
        out = model_output if self.name is None else self.output
        return out.flatten(1)


class Supervised(nn.Module):
    """Plain training with hard labels: ``loss = CE(student(x), y)``."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.student(inputs)
        loss = hard_label_loss(logits, labels)
        return {"loss": loss, "hard_loss": loss.detach(), "logits": logits}


class Distiller(nn.Module):
    """A student plus a frozen teacher; the loss is :func:`respkd.losses.distillation_loss`.

    The teacher never receives gradients (``requires_grad`` off, queried under ``inference_mode``) and stays in
    eval mode whatever mode the distiller is put in, so its dropout and batch-norm statistics never change.
    Only ``self.student`` holds trainable parameters: hand ``distiller.student`` to DDP and the optimizer.

    Args:
        student: the network being trained.
        teacher: any module mapping inputs to logits: one model, or an ensemble behind the same interface.
        temperature: T > 0 for both teacher and student during training.
        soft_weight, hard_weight: weights of the response term (for KD the soft-target term with its T^2 factor) and
            the hard-label term.
        student_response, teacher_response: names of submodules whose outputs are distilled instead of the models'
            final outputs.
        loss: the response term, one of :data:`respkd.losses.RESPONSE_LOSSES` (``kd``: Hinton's soft targets).
        loss_params: that loss's own parameters (DKD: ``alpha``, ``beta``; DIST: ``beta``, ``gamma``).
        standardize: pass both models' logits through :func:`respkd.losses.standardize_logits` before the loss.
        warmup_epochs: multiply the response term by ``min(epoch / warmup_epochs, 1)``, epochs counted from 1 (DKD's
            linear warm-up, as mdistiller's ``DKD``); 0: no warm-up. The epoch comes from :meth:`set_epoch`.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        temperature: float,
        soft_weight: float = 1.0,
        hard_weight: float = 0.0,
        student_response: str | None = None,
        teacher_response: str | None = None,
        loss: str = "kd",
        loss_params: dict[str, float] | None = None,
        standardize: bool = False,
        warmup_epochs: int = 0,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise RespkdError(f"temperature must be > 0, got {temperature}")
        loss_params = dict(loss_params or {})
        try:
            check_loss(loss, loss_params)
        except ValueError as err:
            raise RespkdError(str(err)) from None
        if warmup_epochs < 0:
            raise RespkdError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        self.student = student
        self.teacher = teacher.requires_grad_(False).eval()
        self.temperature, self.soft_weight, self.hard_weight = temperature, soft_weight, hard_weight
        self.loss, self.loss_params, self.standardize = loss, loss_params, standardize
        self.warmup_epochs = warmup_epochs
        self.epoch: int | None = None
        self.student_recorder = ResponseRecorder(student, student_response)
        self.teacher_recorder = ResponseRecorder(teacher, teacher_response)

    def set_epoch(self, epoch: int) -> None:
        """The epoch (from 1) the next batches belong to; the engine calls it at the start of every epoch, also a
        resumed one, so the warm-up factor is always the uninterrupted run's."""
        self.epoch = epoch

    def response_weight(self) -> float:
        """``soft_weight`` times the warm-up factor of the current epoch."""
        if not self.warmup_epochs:
            return self.soft_weight
        if self.epoch is None:
            raise RuntimeError("the response term warms up over epochs: call set_epoch(epoch) before training")
        return self.soft_weight * min(self.epoch / self.warmup_epochs, 1.0)

    def describe_loss(self) -> str:
        """The response term in words, for the run log: e.g. ``dkd (alpha=1, beta=8), warmed up over 20 epochs``."""
        params = ", ".join(f"{k}={v:g}" for k, v in self.loss_params.items())
        return (f"{self.loss}{f' ({params})' if params else ''}"
                f"{', on standardized logits' if self.standardize else ''}"
                f"{f', warmed up over {self.warmup_epochs} epochs' if self.warmup_epochs else ''}")

    @torch.no_grad()
    def check_response_shapes(self, in_shape: tuple[int, ...], device: torch.device) -> None:
        """Run one dummy batch through both models and compare the responses' widths, before any training step
        (and, for DKD, that there are at least 3 classes)."""
        was_training = self.training
        self.eval()
        x = torch.zeros(2, *in_shape, device=device)
        student = self.student_recorder.response(self.student(x))
        teacher = self.teacher_recorder.response(self.teacher(x))
        self.train(was_training)
        if student.shape != teacher.shape:
            s_name = self.student_recorder.name or "output"
            t_name = self.teacher_recorder.name or "output"
            raise RespkdError(
                f"student response '{s_name}' has width {student.shape[1]} but teacher response '{t_name}' has "
                f"width {teacher.shape[1]}: distilled responses must have the same size"
            )
        if self.loss == "dkd" and student.shape[1] < 3:
            raise RespkdError(f"kd.loss dkd needs at least 3 classes, the responses have {student.shape[1]}: with 2 "
                              "the non-target classes are one class and NCKD is undefined (use kd.loss: kd)")

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        self.teacher.eval()
        return self

    def teacher_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = self.teacher_recorder.response(self.teacher(inputs))
        # An inference-mode tensor cannot be saved for backward; a clone outside the mode is an ordinary tensor.
        return out.clone()

    def forward(
        self, inputs: torch.Tensor, labels: torch.Tensor | None = None, teacher_logits: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Loss terms for one batch. ``teacher_logits`` may be given (from a cache) instead of querying the teacher."""
        logits = self.student(inputs)
        if teacher_logits is None:
            teacher_logits = self.teacher_logits(inputs)
        losses = distillation_loss(
            self.student_recorder.response(logits), teacher_logits, labels,
            self.temperature, self.response_weight(), self.hard_weight,
            self.loss, self.loss_params, self.standardize,
        )
        return {**losses, "logits": logits}
