"""Started by tests/test_distributed.py under ``torchrun --nproc_per_node 2`` (gloo). Not a test file itself.

Each launch costs seconds of imports on a small machine, so one launch does three things in order:

1. exercises respkd.distributed's helpers and writes what it saw to ``FOLDER/result<rank>.json``, one file per
   process (not stdout: the two processes share it, and their lines can run into each other there);
2. runs the configs given on the command line with :func:`respkd.experiment.run_many` (what ``--seeds`` and
   sweeps use), into RUNS_ROOT, for the test to compare with one-process runs;
3. calls the CLI on a config whose loss becomes NaN, and writes its exit status to ``FOLDER/diverged<rank>.json``;
4. calls the CLI with a batch size that does not split over two processes and exits with its status.

usage: ddp_worker.py FOLDER RUNS_ROOT BAD_CONFIG DIVERGING_CONFIG CONFIG [CONFIG ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from unittest import mock

import torch

from respkd import distributed
from respkd.cli import main
from respkd.config import load_config
from respkd.errors import ReportedElsewhere, RespkdError
from respkd.experiment import run_many


def outcome(block) -> str:
    """How ``block`` ended in this process: ok, an error to print, reported elsewhere, or another exception."""
    try:
        block()
        return "ok"
    except ReportedElsewhere as err:
        return f"elsewhere: {err}"
    except RespkdError as err:
        return f"error: {err}"
    except Exception as err:
        return f"raised {type(err).__name__}: {err}"


def helpers(folder: Path) -> dict:
    distributed.setup(torch.device("cpu"))
    rank = distributed.rank()

    def fails_on(fail_rank: int, error: Exception):
        def block():
            with distributed.together():
                if rank == fail_rank:
                    raise error
        return block

    built_file = folder / "built.txt"

    def find() -> str | None:
        return built_file.read_text() if built_file.exists() else None

    def build() -> str:
        built_file.write_text(f"built by process {rank}")
        return built_file.read_text()

    value, built = distributed.build_once(find, build)
    part = distributed.shard(199)
    return {
        "rank": rank,
        "all_pass": outcome(fails_on(-1, RuntimeError("never"))),
        "user_error_on_1": outcome(fails_on(1, RespkdError("bad input seen by process 1 only"))),
        "bug_on_1": outcome(fails_on(1, ValueError("a bug in process 1"))),
        "user_error_on_0": outcome(fails_on(0, RespkdError("bad input seen by process 0 only"))),
        "sum": distributed.all_reduce_sum(torch.tensor([rank + 1.0, 10.0])).tolist(),
        "mean": distributed.all_reduce_mean(torch.tensor([float(rank)])).tolist(),
        "shard": [part.start, part.stop],
        "built": built, "value": value,
    }


if __name__ == "__main__":
    folder, runs_root, bad_config, diverging_config, *configs = sys.argv[1:]
    result = helpers(Path(folder))
    (Path(folder) / f"result{result['rank']}.json").write_text(json.dumps(result))
    run_many([load_config(c) for c in configs], runs_root)
    # main() leaves the process group on its way out, and joining it again in the same processes is not reliable
    # (torchrun's store keeps the first group's keys): keep it for the last call
    with mock.patch.object(distributed, "cleanup", lambda: None):
        status = main(["train", diverging_config, "--runs-root", runs_root])
    (Path(folder) / f"diverged{result['rank']}.json").write_text(json.dumps(status))
    sys.exit(main(["train", bad_config, "--runs-root", runs_root, "--set", "train.batch_size=127"]))
