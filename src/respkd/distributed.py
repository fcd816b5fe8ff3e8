"""Several processes training one student: what ``torchrun`` launches (DistributedDataParallel).

``torchrun --nproc_per_node N -m respkd.cli distill CONFIG`` starts N copies of the command with ``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK`` (and the rendezvous address) in their environment. Without those variables, or with
``WORLD_SIZE=1``, every function here is a no-op and a run is exactly what it is in one process.

The division of work (see :func:`respkd.experiment.run`):

* ``train.batch_size`` is the *global* batch. The data order is the loader's function of ``(seed, epoch)``, the
  same in every process; process ``r`` trains on the ``r``-th contiguous share of every global batch
  (:class:`respkd.data.memory.BatchLoader`'s ``rank``/``world_size``). The batch size must be a multiple of the
  number of processes, so every share has the same size: each process's loss is the mean over its share, and
  DDP's average of the processes' gradients is then exactly the gradient of the mean over the global batch, the
  same as in one process (up to float rounding).
* Only the student is wrapped in DistributedDataParallel; a teacher is frozen and answers for its own process's
  share. Each process evaluates a contiguous slice of the test set and the counts are summed
  (:func:`all_reduce_sum`), so every test example is counted exactly once (no sampler padding).
* Process 0 alone prints, writes the run folder and builds caches (:func:`build_once`).
* Checks that can fail run inside :func:`together`: every process passes them, or every process stops and
  process 0 reports the first failure in one line; none is left waiting for the others. A signal (SIGTERM, which
  torchrun forwards to every process, or one sent to a single process) stops every process at the same point too
  (see :mod:`respkd.preemption`).

Backends: gloo on CPU, NCCL on CUDA, where process ``r`` uses ``cuda:LOCAL_RANK``.
"""

from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from respkd import preemption
from respkd.errors import ReportedElsewhere, RespkdError, Stopped, first_line

__all__ = [
    "TIMEOUT", "Launch", "agree_max", "all_reduce_mean", "all_reduce_sum", "barrier", "build_once", "check_batch_size",
    "check_supported", "cleanup", "gather_per_process", "group_device", "is_initialized", "is_main_process", "launch",
    "own_part", "print_main", "process_device", "rank", "reseed_per_process", "setup", "shard", "together",
    "world_size", "wrap_student",
]

T = TypeVar("T")

# The CPU (gloo) group that small votes go through (agree_max): under NCCL the default group's collectives would
# make the host wait for the GPU stream. None: the default group is gloo already, or there is none.
_cpu_group: "dist.ProcessGroup | None" = None

# How long a process waits for the others at a collective: building a large teacher cache (process 0 alone, the
# others waiting) must fit in it. torch's default for gloo; NCCL's own default is 10 minutes.
TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class Launch:
    """Where this process sits, as torchrun's environment says."""

    rank: int
    world_size: int
    local_rank: int


def launch() -> Launch | None:
    """This process's place when launched by torchrun with several processes; None for a one-process run."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return None
    try:
        return Launch(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    except (KeyError, ValueError):
        raise RespkdError("WORLD_SIZE is set but RANK is missing or not a number: launch with torchrun") from None


def world_size() -> int:
    here = launch()
    return 1 if here is None else here.world_size


def rank() -> int:
    here = launch()
    return 0 if here is None else here.rank


def is_main_process() -> bool:
    """True in a one-process run and in process 0: the one that prints and writes files."""
    return rank() == 0


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def print_main(line: str) -> None:
    if is_main_process():
        print(line, flush=True)


def process_device(device: torch.device) -> torch.device:
    """The device this process trains on: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun."""
    here = launch()
    if here is None or device.type != "cuda":
        return device
    if device.index is not None:
        raise RespkdError(f"device '{device}' names one GPU, but under torchrun each process takes cuda:LOCAL_RANK: "
                          "use device: cuda (or auto)")
    if here.local_rank >= torch.cuda.device_count():
        raise RespkdError(f"process {here.rank} has LOCAL_RANK {here.local_rank} but this machine has "
                          f"{torch.cuda.device_count()} GPU(s): use at most that many processes per node")
    return torch.device("cuda", here.local_rank)


def setup(device: torch.device) -> None:
    """Join the process group (gloo on CPU, NCCL on CUDA) the first time; later calls wait for every process.

    Nothing happens in a one-process run. ``device`` is what :func:`process_device` returned.
    """
    here = launch()
    if here is None:
        return
    if is_initialized():
        barrier()
        return
    if not dist.is_available():
        raise RespkdError("this torch build has no torch.distributed: run in one process")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(backend, timeout=TIMEOUT, **({"device_id": device} if backend == "nccl" else {}))
    except (ValueError, RuntimeError) as err:
        raise RespkdError(f"process {here.rank} could not join the process group: {first_line(err)}") from None
    global _cpu_group
    _cpu_group = dist.new_group(backend="gloo", timeout=TIMEOUT) if backend == "nccl" else None


def cleanup() -> None:
    """Leave the process group (the CLI calls this on the way out, also after an error)."""
    global _cpu_group
    if is_initialized():
        # A DistributedDataParallel left in a reference cycle and freed only after the group is gone aborts the
        # process at exit ("terminate called without an active exception"): free it first.
        gc.collect()
        dist.destroy_process_group()
        _cpu_group = None


def group_device() -> torch.device:
    """Where collective tensors must live: the current GPU for NCCL, the CPU for gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over all processes (itself in a one-process run)."""
    if not is_initialized():
        return tensor
    total = tensor.to(group_device(), copy=True)
    dist.all_reduce(total)
    return total.to(tensor.device)


def agree_max(values: list[int]) -> list[int]:
    """The element-wise maximum of a few integers over all processes (``values`` itself in a one-process run), on
    the CPU: no GPU stream is waited for. Under torch.distributed every process must call it."""
    if not is_initialized():
        return list(values)
    votes = torch.tensor(values, dtype=torch.int64)
    dist.all_reduce(votes, op=dist.ReduceOp.MAX, group=_cpu_group)
    return votes.tolist()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise mean of ``tensor`` over all processes (itself in a one-process run)."""
    return all_reduce_sum(tensor) / world_size() if is_initialized() else tensor


def shard(n: int) -> slice:
    """This process's contiguous part of ``n`` examples (sizes differ by at most one; all parts cover ``n`` once)."""
    size, r = world_size(), rank()
    base, extra = divmod(n, size)
    start = r * base + min(r, extra)
    return slice(start, start + base + (r < extra))


def gather_per_process(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every process's copy of each of ``tensors`` (each the same shape in every process), named
    ``process<rank>.<name>``. One process: no communication. Under torch.distributed every process must call it."""
    world = world_size()
    if world == 1:
        return {f"process0.{name}": t for name, t in tensors.items()}
    device = group_device()
    gathered = {}
    for name in sorted(tensors):  # the same order in every process
        local = tensors[name].detach().to(device).reshape(-1)
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local)
        gathered.update({f"process{r}.{name}": part.cpu().reshape(tensors[name].shape) for r, part in enumerate(parts)})
    return gathered


def own_part(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This process's tensors of :func:`gather_per_process`, under their own names."""
    prefix = f"process{rank()}."
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def check_batch_size(batch_size: int, n_train: int) -> None:
    """Every global batch must split into equal shares (see the module docstring for why)."""
    size = world_size()
    if size == 1:
        return
    if n_train > batch_size and batch_size % size:
        raise RespkdError(f"train.batch_size {batch_size} does not split evenly over {size} processes: it is the "
                          f"global batch, so make it a multiple of {size}")
    if n_train <= batch_size and n_train % size:
        raise RespkdError(f"the training set ({n_train} examples) is one batch, smaller than train.batch_size, and "
                          f"does not split evenly over {size} processes")


def reseed_per_process(seed: int) -> None:
    """Give each process its own stream for randomness in the forward pass (dropout), after the model is built.

    Every process builds the same initial weights from ``seed``; left alone they would then also draw the same
    dropout masks for their different shares of the batch. One-process runs are left untouched.
    """
    if launch() is not None:
        torch.manual_seed(seed + 1_000_003 * (rank() + 1))


def wrap_student(task: nn.Module, student: nn.Module, device: torch.device, sync_batchnorm: bool = False) -> None:
    """Put ``task.student`` (only the student, never the teacher) behind DistributedDataParallel.

    ``student`` stays the plain module: the optimizer, the max-norm constraint, evaluation and the checkpoint use it
    (so a checkpoint has no ``module.`` prefix). With ``sync_batchnorm`` its batch-norm layers are converted in place
    to SyncBatchNorm, so their statistics cover the global batch (CUDA only). Nothing happens in one process.
    """
    if not is_initialized():
        return
    if sync_batchnorm:
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(student)
        assert converted is student, "a student that is itself a batch-norm layer"  # children are replaced in place
    task.student = nn.parallel.DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)


def check_supported(sync_batchnorm: bool, student_response: str | None, device: torch.device) -> None:
    """What several processes cannot do, refused before anything is written."""
    if launch() is None:
        return
    if sync_batchnorm and device.type != "cuda":
        raise RespkdError("train.sync_batchnorm needs CUDA (torch's SyncBatchNorm runs on GPUs only); "
                          "set it to false on CPU")
    if student_response is not None:
        # DistributedDataParallel averages the gradients of losses computed from the wrapped model's output; a loss
        # on a hooked inner response bypasses it (measured: the processes' gradients were then not averaged).
        raise RespkdError("kd.student_response is not supported under torchrun with several processes: "
                          "distil the student's output, or run in one process")


@contextlib.contextmanager
def together(signals: bool = True) -> Iterator[None]:
    """Run a block that may fail (checks, loading, building) so that all processes stop together if one does.

    On leaving the block the processes compare notes. If any failed, process 0 raises the first failure (a
    :class:`RespkdError` naming the failing process, or its own error), the failing process re-raises an
    unexpected exception so its traceback shows, and the others raise :class:`ReportedElsewhere`, which the CLI
    turns into exit status 2 without printing: one message, and nobody waits for a process that has gone. Else, if
    any process was stopped by a signal or (with ``signals``) has received one (:mod:`respkd.preemption`), every
    process raises :class:`~respkd.errors.Stopped`.
    """
    if not is_initialized():
        yield
        return
    error: Exception | None = None
    stopped: Stopped | None = None
    try:
        yield
    except Exception as err:
        error = err
    except Stopped as stop:
        stopped = stop
    me, size = rank(), world_size()
    signum = stopped.signum if stopped is not None else (preemption.requested() or 0) if signals else 0
    status = error.exit_status if isinstance(error, RespkdError) else 0
    failed, top_signal, status = agree_max([-(me if error is not None else size), signum, status])
    failed = -failed
    if failed == size:
        if top_signal:
            raise stopped if stopped is not None else Stopped(top_signal)
        return
    message = _broadcast_text(_describe(error) if me == failed else "", src=failed)
    if me == failed and (me == 0 or not isinstance(error, RespkdError)):
        raise error
    if me == 0:
        reported = RespkdError(f"process {failed} of {size}: {message}")
        reported.exit_status = status or 2
        raise reported
    raise ReportedElsewhere(f"process {failed} of {size}: {message}", status or 2)


def _describe(error: Exception | None) -> str:
    if isinstance(error, RespkdError):
        return str(error)
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def _broadcast_text(text: str, src: int) -> str:
    """``text`` as process ``src`` has it, in every process (bytes in a tensor: nothing is pickled)."""
    device = group_device()
    data = text.encode()
    length = torch.tensor([len(data)], dtype=torch.int64, device=device)
    dist.broadcast(length, src)
    buffer = torch.zeros(int(length), dtype=torch.uint8, device=device)
    if rank() == src:
        buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buffer, src)
    return bytes(buffer.cpu().tolist()).decode(errors="replace")


def build_once(find: Callable[[], T | None], build: Callable[[], T]) -> tuple[T, bool]:
    """``find()``, or ``build()`` when it finds nothing; returns the result and whether this process built it.

    Under torchrun process 0 does this first while the others wait; then the first process of each other node
    that still finds nothing builds its own copy (a folder that is not shared between nodes); then everyone else
    opens what is there. Each step runs inside :func:`together`.
    """
    def find_or_build() -> tuple[T, bool]:
        found = find()
        return (found, False) if found is not None else (build(), True)

    here = launch()
    if here is None or not is_initialized():
        return find_or_build()
    result: tuple[T, bool] | None = None
    with together():
        if here.rank == 0:
            result = find_or_build()
    with together():
        if here.rank != 0 and here.local_rank == 0:
            result = find_or_build()
    with together():
        if result is None:
            found = find()
            if found is None:
                raise RespkdError("the first process of this node built a cache that this process cannot find")
            result = (found, False)
    return result
