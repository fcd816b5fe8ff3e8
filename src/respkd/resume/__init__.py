"""Exact resume: a run's training state, saved as it trains, so that a killed run continues where it stopped.

``<run>/resume.safetensors`` is written before the first step, every ``train.checkpoint_every_steps`` optimizer steps
(0: never mid-epoch) and at every epoch end, atomically (:func:`respkd.files.atomic_write`: a kill leaves the
previous state or the new one, never half of one). It is deleted when the run finishes: the final weights are in
``model.safetensors``. It holds

* tensors: the student's weights (``model.*``); the optimizer's state tensors (``optimizer.<param>.<name>``: momentum
  buffers, Adam moments and step counts); the states of the random number generators as uint8 tensors
  (``rng.numpy``, ``rng.python``, and per process ``process<rank>.rng.torch`` and ``process<rank>.rng.cuda``); the
  running loss sums of the epoch in progress, per process (``process<rank>.epoch_sums.<term>``, float32 as summed);
* JSON metadata (the safetensors header, key ``respkd``): where training stands (epochs done, batches done in the
  next one, optimizer step), the scheduler's ``state_dict``, the optimizer's parameter groups and non-tensor state,
  the config the state belongs to, what the data and the teacher were (examples, SHA-256s), the times spent so far,
  the positions of earlier resumes, and the SHA-256 of the tensors (checked on load).

Nothing is pickled. The resumed run is *bitwise* the uninterrupted one because nothing it draws depends on the kill:
the batch order and jitter are functions of (seed, epoch) (:class:`respkd.data.memory.BatchLoader`), so skipping the
batches already trained draws nothing; dropout draws from torch's global generator, restored here; the teacher (in
eval mode, online or cached) answers an input the same way every time; the running sums come back as the float32
tensors they were. That needs the same config, data, teacher, software and number of processes, and the same
device and threads (another thread count can reorder floating-point sums).

Under ``torch.distributed`` every process hands its own generator states and running sums to process 0, which alone
writes the file; every process reads the same file back and takes its own part. The number of processes is part of
the state's identity: a resume with another number is refused.

The pieces: :mod:`~respkd.resume.state` (the state of one run, and the checks before a resume),
:mod:`~respkd.resume.codec` (the optimizer's and scheduler's state as JSON) and :mod:`~respkd.resume.rng` (the
generators).
"""

from __future__ import annotations

from respkd.resume.state import (STATE_NAME, Position, Refusal, TrainingState, check_flags, check_start, has_state,
                                 state_problem)

__all__ = ["STATE_NAME", "Position", "Refusal", "TrainingState", "check_flags", "check_start", "has_state",
           "state_problem"]
