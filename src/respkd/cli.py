"""The ``respkd`` command: train, distil, evaluate, export, adjust biases, sweep, tabulate, plot, reproduce, specialists

Every user error (config, data, checkpoint, command line) ends as one line on stderr and exit status 2;
nothing is written before the input has been checked. The other ways a command ends early are one line too: a loss
that became non-finite (exit status 3), a file that could not be written (74), a stop by SIGTERM or SIGINT (128 + n:
143, 130), whose line says how to continue (:mod:`respkd.preemption`).
"""

from __future__ import annotations

import argparse
import errno
import json
import shlex
import sys
from pathlib import Path
from typing import NoReturn

from respkd import preemption
from respkd.errors import ReportedElsewhere, RespkdError, Stopped, shorten

__all__ = ["ArgumentParser", "build_parser", "continue_command", "main", "stop_line"]

# What runs under torchrun with several processes (see respkd.distributed); the rest run in one process.
DISTRIBUTED_COMMANDS = ("train", "distill", "distil", "sweep")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its usage errors on one line, like every other respkd error (exit status 2 as argparse's).

    argparse would print the whole usage block first; the one line names the subcommand whose ``--help`` has it.
    Subparsers inherit this class (``add_subparsers`` builds them with the parent's type).
    """

    def error(self, message: str) -> NoReturn:
        help_command = " ".join([self.prog, "--help"])  # e.g. "respkd train --help"
        self.exit(2, f"respkd: error: {' '.join(message.split())} (see '{help_command}')\n")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML experiment config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--runs-root", default="runs", help="parent folder of run directories (default: runs)")
    p.add_argument("--force", action="store_true", help="overwrite a finished run of the same name")


def cmd_train(args: argparse.Namespace, distil: bool) -> int:
    from respkd.config import load_config, parse_list, with_seed
    from respkd.experiment import run, run_many
    from respkd.resume import check_flags
    from respkd.seeds import report_seeds

    cfg = load_config(args.config, args.overrides)
    if distil and not cfg.distills:
        raise RespkdError(f"{args.config}: 'distill' needs 'teacher' and 'kd' sections (use 'respkd train' for hard labels)")
    if not distil and cfg.distills:
        raise RespkdError(f"{args.config}: has a teacher; use 'respkd distill'")
    if args.seeds is None:
        run(cfg, args.runs_root, force=args.force, resume=args.resume)
        return 0
    # One independent run per seed, named <name>-seed<k>: the members of a seed ensemble. Finished members are
    # skipped and interrupted ones resume by themselves (--resume changes nothing here); `--seeds 3` alone trains
    # one member (array jobs, separate processes).
    check_flags(args.resume, args.force)
    seeds = parse_list(args.seeds, "--seeds")
    configs = [with_seed(cfg, k) for k in seeds]
    summaries = run_many(configs, args.runs_root, force=args.force)
    report_seeds(cfg.name, Path(args.runs_root), [Path(args.runs_root) / c.name for c in configs], summaries)
    return 0


def cmd_eval_ensemble(args: argparse.Namespace) -> int:
    from respkd.checkpoint_eval import evaluate_ensemble

    r = evaluate_ensemble(args.checkpoints, args.rule, args.temperature, data_path=args.data_path,
                          data_root=args.data_root, distilled=args.distilled)
    if args.json:
        print(json.dumps(r))
        return 0
    e = r["ensemble"]
    print(f"ensemble of {len(r['members'])} ({r['combine']}, T={r['temperature']:g}): test errors {e['errors']}/{e['n']}, "
          f"top-1 {e['top1']:.2f}%")
    for m in r["members"]:
        print(f"  member {m['checkpoint']}: test errors {m['errors']}/{m['n']}, top-1 {m['top1']:.2f}%")
    print(f"  mean member: {r['member_errors_mean']:.1f} test errors")
    if "distilled" in r:
        d = r["distilled"]
        kept = "n/a (no ensemble gain)" if r["gain_fraction"] is None else f"{100 * r['gain_fraction']:.0f}%"
        print(f"  distilled {d['checkpoint']}: test errors {d['errors']}/{d['n']}; share of the ensemble's gain kept: {kept}")
    return 0


def cmd_adjust_bias(args: argparse.Namespace) -> int:
    from respkd.bias import adjust_bias, format_result
    from respkd.config import parse_list

    classes = parse_list(args.classes, "--classes")
    low, high = args.range
    r = adjust_bias(args.checkpoint, classes, shift=args.shift, search=args.search, low=low, high=high,
                    step=args.step, out=args.out, data_path=args.data_path, data_root=args.data_root)
    if args.json:
        print(json.dumps(r))
    else:
        print(format_result(r))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from respkd.config import load_config, parse_list
    from respkd.sweep import run_sweep, sweep_folder

    cfg = load_config(args.config, args.overrides)
    temperatures = parse_list(args.temperatures, "--temperatures", kind=float)
    hiddens = [parse_list(h, "--hidden", unique=False) for h in args.hidden]
    result = run_sweep(cfg, temperatures, hiddens, args.runs_root, force=args.force)
    if result is not None:  # None in torchrun's processes other than 0
        print(result["table"])
        print(f"written to {sweep_folder(Path(args.runs_root), cfg)}/ (sweep.md, sweep.png, sweep.json)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from respkd.checkpoint_eval import evaluate_checkpoint, evaluate_weights

    if (args.model is None) != (args.dataset is None):
        given, missing = ("--model", "--dataset") if args.model else ("--dataset", "--model")
        raise RespkdError(f"{given} needs {missing}: a plain state dict is evaluated as --model NAME on the test set "
                          "of --dataset NAME (a respkd checkpoint or run records both: give neither)")
    if args.model is not None:
        result = evaluate_weights(args.source, args.model, args.dataset, args.overrides, data_path=args.data_path,
                                  data_root=args.data_root)
    else:
        result = evaluate_checkpoint(args.source, data_path=args.data_path, data_root=args.data_root,
                                     runs_root=args.runs_root, overrides=args.overrides)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['checkpoint']}: test errors {result['errors']}/{result['n']}, top-1 {result['top1']:.2f}%, "
              f"top-5 {result['top5']:.2f}%")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from respkd.weights import export_student

    r = export_student(args.source, args.out, args.format, force=args.force, runs_root=args.runs_root)
    if r["format"] == "onnx":
        shape = ", ".join(map(str, r["in_shape"]))
        print(f"wrote {r['out']} (ONNX, opset {r['opset']}: 'input' [batch, {shape}] -> 'logits' "
              f"[batch, {r['num_classes']}])")
        print(f"  runs with: onnxruntime.InferenceSession({r['out']!r}).run(None, {{'input': x}})[0]")
    else:
        print(f"wrote {r['out']} ({r['format']}, {r['tensors']} tensors: the student's state dict alone)")
        print(f"  loads with: {r['constructor']}.load_state_dict(...)")
        if r["note"]:
            print(f"  note: {r['note']}")
    norm = r["normalization"] or {}
    print(f"  inputs: {'x'.join(map(str, r['in_shape']))}, (pixels / 255 - {norm.get('mean')}) / {norm.get('std')}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from respkd.predict import predict, prediction_lines

    result = predict(args.source, args.images, top=args.top, runs_root=args.runs_root, device=args.device)
    print(json.dumps(result) if args.json else "\n".join(prediction_lines(result)))
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from respkd.report import results_json, results_table

    runs = [Path(d) for d in args.runs]
    if args.json:
        print(json.dumps(results_json(runs, per_run=args.per_run)))
    else:
        print(results_table(runs, link_root=Path(args.link_root) if args.link_root else None,
                            group_seeds=not args.per_run))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from respkd.plot import check_figure_path, plot_curves, require_matplotlib, run_curves, run_folder
    from respkd.report import distillation_verdicts

    out = Path(args.out)
    check_figure_path(out)
    require_matplotlib("respkd plot")
    run_dirs = list(dict.fromkeys(run_folder(r, args.runs_root) for r in args.runs))
    curves, teachers = run_curves(run_dirs)
    verdicts = distillation_verdicts(run_dirs)
    plot_curves(curves, teachers, out, title=args.title)
    for line in verdicts:
        print(line)
    print(f"wrote {out} (training loss and test errors per epoch of {len(curves)} run(s))")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from respkd.plan import PlanStopped, run_plan, run_plan_unit

    if args.unit is not None:
        if args.jobs != 1 or args.keep_going:
            raise RespkdError("--unit runs one unit in this process; give it without --jobs or --keep-going")
        run_plan_unit(args.plan, args.unit, runs_root=args.runs_root, overrides=args.overrides, force=args.force,
                      threads=args.threads)
        return 0
    try:
        run_plan(args.plan, runs_root=args.runs_root, overrides=args.overrides, force=args.force, jobs=args.jobs,
                 threads=args.threads, keep_going=args.keep_going)
    except PlanStopped as stop:  # a unit crashed, or a signal came: not the input's fault, so not exit status 2
        print(f"respkd: {stop}", file=sys.stderr)
        return stop.exit_code
    return 0


def cmd_specialists_subsets(args: argparse.Namespace) -> int:
    from respkd.specialists.config import load_specialists_config
    from respkd.specialists.train import prepare_run

    cfg = load_specialists_config(args.config, args.overrides)
    ctx, subsets = prepare_run(cfg, args.runs_root, force=False)
    names = ctx.data.info.class_names
    for k, subset in enumerate(subsets):
        print(f"specialist {k}: {', '.join(names[c] for c in subset)}")
    print(f"written to {ctx.out_dir}/ (subsets.json, subsets.png)")
    return 0


def cmd_specialists_train(args: argparse.Namespace) -> int:
    from respkd.specialists.config import load_specialists_config
    from respkd.specialists.train import prepare_run, train_all, train_specialist

    cfg = load_specialists_config(args.config, args.overrides)
    if args.threads is not None and args.threads < 1:
        raise RespkdError(f"--threads must be at least 1, got {args.threads}")
    if args.only is None:
        train_all(cfg, args.config, args.overrides, args.runs_root, workers=args.workers, force=args.force)
        return 0
    ctx, subsets = prepare_run(cfg, args.runs_root, force=args.force, threads=args.threads)
    train_specialist(ctx, subsets, args.only, force=args.force)
    return 0


def cmd_specialists_eval(args: argparse.Namespace) -> int:
    from respkd.specialists.config import load_specialists_config
    from respkd.specialists.results import evaluate_specialists, markdown_section

    cfg = load_specialists_config(args.config, args.overrides)
    result = evaluate_specialists(cfg, args.runs_root)
    print(json.dumps(result) if args.json else markdown_section([result]))
    return 0


def cmd_specialists_table(args: argparse.Namespace) -> int:
    from respkd.report import read_summary
    from respkd.specialists.results import control_section, markdown_section, read_eval

    results = [read_eval(Path(d)) for d in args.folders]
    print(markdown_section(results))
    if args.control:
        print("\n" + control_section(results, [read_summary(Path(d)) for d in args.control]))
    return 0


def _add_specialists_parser(sub) -> None:
    sp = sub.add_parser("specialists", help="a generalist plus specialists on confusable classes (the paper's section 5)")
    ss = sp.add_subparsers(dest="action", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("config", help="specialists YAML config")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config key, e.g. --set specialist.train.epochs=2 (repeatable)")
        p.add_argument("--runs-root", default="runs", help="parent folder of run directories (default: runs)")

    p = ss.add_parser("subsets", help="find the confusable subsets on the generalist's validation split; write "
                                      "subsets.json and the heat map")
    common(p)
    p.set_defaults(func=cmd_specialists_subsets)
    p = ss.add_parser("train", help="train every unfinished specialist, each an independent process (or one: --only)")
    common(p)
    p.add_argument("--workers", type=int, default=1, help="specialists trained at the same time (default 1)")
    p.add_argument("--only", type=int, metavar="K", help="train specialist K alone, in this process (array jobs)")
    p.add_argument("--threads", type=int, help="torch threads (default: cores // workers, or the config's threads)")
    p.add_argument("--force", action="store_true", help="retrain specialists that already finished")
    p.set_defaults(func=cmd_specialists_train)
    p = ss.add_parser("eval", help="test top-1 of the generalist vs generalist + specialists (writes eval.json)")
    common(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_specialists_eval)
    p = ss.add_parser("table", help="markdown tables from finished evaluations (several: mean ± std over runs)")
    p.add_argument("folders", nargs="+", help="specialists folders holding eval.json (e.g. one per seed)")
    p.add_argument("--control", nargs="+", metavar="RUN",
                   help="compute-matched control runs (the generalist trained further), one per folder, same order")
    p.set_defaults(func=cmd_specialists_table)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="respkd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    seeds_help = ("one independent run per seed, named <name>-seed<k> (e.g. 0,1,2,3,4: the members of an ensemble); "
                  "finished ones are skipped, interrupted ones resume")
    resume_help = ("continue the interrupted run in its run folder from its training state (resume.safetensors); "
                   "the result is bitwise that of an uninterrupted run")
    p = sub.add_parser("train", help="train a model with hard labels")
    _add_run_args(p)
    p.add_argument("--seeds", metavar="K,K,...", help=seeds_help)
    p.add_argument("--resume", action="store_true", help=resume_help)
    p.set_defaults(func=lambda a: cmd_train(a, distil=False))
    p = sub.add_parser("distill", aliases=["distil"], help="distil a teacher into a student")
    _add_run_args(p)
    p.add_argument("--seeds", metavar="K,K,...", help=seeds_help)
    p.add_argument("--resume", action="store_true", help=resume_help)
    p.set_defaults(func=lambda a: cmd_train(a, distil=True))
    p = sub.add_parser("eval", help="evaluate a run, a checkpoint or a plain state dict on a test set")
    p.add_argument("source", help="a checkpoint, a run directory or a run's name under --runs-root; or, with --model, "
                                  "a plain state dict (.pth, .pt, .bin, .safetensors)")
    p.add_argument("--model", metavar="NAME", help="the architecture of a plain state dict, as a config's model.name "
                                                   "(mlp, torchvision.resnet18, timm.resnet18, ...); needs --dataset")
    p.add_argument("--dataset", metavar="NAME", help="the test set of a plain state dict (as data.dataset)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a data.* key (e.g. data.test_limit=1000), or with --model a model.* option "
                        "(e.g. model.hidden=[800,800]) (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object (top1, top5, errors, n, ...)")
    p.add_argument("--data-path", help="read the test set from this folder instead of the checkpoint's source")
    p.add_argument("--data-root", help="cache folder (default: the checkpoint config's data.root)")
    p.add_argument("--runs-root", default="runs", help="where run names are looked up (default: runs)")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("export", help="write a run's student as a plain state dict for its torchvision/timm "
                                      "constructor, or as ONNX")
    p.add_argument("source", help="a checkpoint, a run directory, or a run's name under --runs-root")
    p.add_argument("out", help="the file to write (never the input; an existing file only with --force)")
    p.add_argument("--format", choices=["safetensors", "pth", "onnx"],
                   help="safetensors, pth (torch.save of the state dict) or onnx (the graph, batch size free; needs "
                        "the onnx extra); default: from OUT's suffix")
    p.add_argument("--runs-root", default="runs", help="where run names are looked up (default: runs)")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("predict", help="the most probable classes of image files, read as the model's training images")
    p.add_argument("source", help="a checkpoint, a run directory, or a run's name under --runs-root")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files, or folders of them")
    p.add_argument("--top", type=int, metavar="K", help="the K most probable classes (default 5, at most the classes)")
    p.add_argument("--json", action="store_true", help="print one JSON object (predictions: image, top classes)")
    p.add_argument("--runs-root", default="runs", help="where run names are looked up (default: runs)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1 or auto")
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("eval-ensemble", help="test accuracy of an ensemble, of each member, and of a distilled net")
    p.add_argument("checkpoints", nargs="+", help="the members' checkpoints (two or more)")
    p.add_argument("--rule", choices=["mean_probs", "mean_logits"], default="mean_probs",
                   help="mean_probs: average the probabilities (the paper); mean_logits: their geometric mean")
    p.add_argument("--temperature", type=float, default=1.0, help="T at which mean_probs averages (default 1)")
    p.add_argument("--distilled", metavar="CHECKPOINT", help="a net distilled from the ensemble, to compare")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--data-path", help="read the test set from this folder instead of the checkpoints' source")
    p.add_argument("--data-root", help="cache folder (default: the first member config's data.root)")
    p.set_defaults(func=cmd_eval_ensemble)
    p = sub.add_parser("adjust-bias", help="shift output biases of some classes; evaluate before and after")
    p.add_argument("checkpoint")
    p.add_argument("--classes", required=True, metavar="C,C,...", help="classes whose bias to shift, e.g. 3 or 7,8")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--shift", type=float, help="add this to the biases (negative lowers them), e.g. 3.5 or -7.6")
    how.add_argument("--search", action="store_true",
                     help="choose the shift maximising accuracy on the run's validation split (needs data.val_size > 0)")
    p.add_argument("--range", type=float, nargs=2, default=(-15.0, 15.0), metavar=("LOW", "HIGH"),
                   help="shifts searched (default -15 15)")
    p.add_argument("--step", type=float, default=0.1, help="grid step of the search (default 0.1)")
    p.add_argument("--out", help="write the adjusted checkpoint here (a new file; never the input)")
    p.add_argument("--json", action="store_true", help="print one JSON object (shift, before, after, search)")
    p.add_argument("--data-path", help="read the data from this folder instead of the checkpoint's source")
    p.add_argument("--data-root", help="cache folder (default: the checkpoint config's data.root)")
    p.set_defaults(func=cmd_adjust_bias)
    p = sub.add_parser("sweep", help="distil the same student at several temperatures (and hidden sizes), then plot")
    _add_run_args(p)
    p.add_argument("--temperatures", required=True, metavar="T,T,...", help="e.g. 1,2,2.5,3,4,8,20")
    p.add_argument("--hidden", action="append", default=[], metavar="W,W,...",
                   help="a model.hidden to sweep, e.g. 300,300 (repeatable; default: the config's)")
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("table", help="print the results table (markdown) of finished runs; runs that differ only "
                                     "by seed share one row: mean ± sample std (n=K)")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--link-root", help="write Config/Download links relative to this folder")
    p.add_argument("--per-run", action="store_true", help="one row per run, seeds not grouped")
    p.add_argument("--json", action="store_true",
                   help="print the numbers as JSON: per row n, seeds, mean and std of top1/top5/errors, per-run values")
    p.set_defaults(func=cmd_table)
    p = sub.add_parser("plot", help="draw training loss and test errors per epoch of runs (from metrics.jsonl), "
                                    "the teacher's test errors as a line; compare a distillation with its control")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories, or run names under --runs-root")
    p.add_argument("--out", default="curves.png", help="the figure: .png, .svg or .pdf (default: curves.png)")
    p.add_argument("--runs-root", default="runs", help="where run names are looked up (default: runs)")
    p.add_argument("--title", help="a title above the two panels")
    p.set_defaults(func=cmd_plot)
    p = sub.add_parser("reproduce", help="run a plan of experiments in order, skipping finished ones, then tabulate")
    p.add_argument("plan", help="a plan YAML, or the name of one under configs/plans/ (e.g. mnist_table)")
    p.add_argument("--runs-root", help="parent folder of the run directories (default: the plan's runs_root)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key in every stage's config (repeatable)")
    p.add_argument("--force", action="store_true", help="rerun stages that already finished")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="run up to N independent units (runs, sweep cells, evaluations) at a time, each in a process "
                        "of its own (default 1: one after another, in this process)")
    p.add_argument("--threads", type=int, metavar="K",
                   help="torch threads of each process (default: cores // N with --jobs, else torch's)")
    p.add_argument("--keep-going", action="store_true",
                   help="after a unit fails, go on with every unit that does not read what it makes; the report "
                        "covers what finished and lists what did not (exit status 1)")
    p.add_argument("--unit", type=int, metavar="K",
                   help="run only the plan's K-th unit, in this process (what each --jobs process runs; array jobs); "
                        "the runs it reads must be finished")
    p.set_defaults(func=cmd_reproduce)
    _add_specialists_parser(sub)
    return parser


def check_launch(command: str) -> None:
    """Under torchrun with several processes, refuse commands that would do the same work (and writes) N times."""
    from respkd import distributed

    if distributed.world_size() > 1 and command not in DISTRIBUTED_COMMANDS:
        raise RespkdError(f"'respkd {command}' runs in one process; under torchrun only "
                          f"{', '.join(c for c in DISTRIBUTED_COMMANDS if c != 'distil')} run in several")


def continue_command(args: argparse.Namespace, stop: Stopped) -> list[str] | None:
    """The command that continues what ``stop`` interrupted: the same one, resuming (``--resume`` for a single run
    with a training state; plans, ``--seeds``, sweeps and specialists resume by themselves), without ``--force``;
    None for a command with nothing to continue."""
    common = [*(["--runs-root", args.runs_root] if getattr(args, "runs_root", None) not in (None, "runs") else []),
              *[a for o in getattr(args, "overrides", []) for a in ("--set", o)]]
    if args.command in ("train", "distill", "distil"):
        again = ["respkd", args.command, args.config, *common]
        if args.seeds is not None:
            return again + ["--seeds", args.seeds]
        return again + (["--resume"] if stop.state is not None else [])
    if args.command == "reproduce":
        return ["respkd", "reproduce", args.plan, *common]
    if args.command == "sweep":
        return ["respkd", "sweep", args.config, "--temperatures", args.temperatures,
                *[a for h in args.hidden for a in ("--hidden", h)], *common]
    if args.command == "specialists" and args.action == "train":
        return ["respkd", "specialists", "train", args.config, *common,
                *(["--workers", str(args.workers)] if args.workers != 1 else []),
                *(["--only", str(args.only)] if args.only is not None else [])]
    return None


def stop_line(args: argparse.Namespace, stop: Stopped, processes: int = 1) -> str:
    """The one line a stopped command prints: where it stopped, what it kept, and how to continue."""
    parts = [f"respkd: stopped by {stop.signal_name}" + (f" at {stop.where}" if stop.where else "")]
    parts.append(f"the training state is in {stop.state}" if stop.state is not None
                 else "nothing was left half-written")
    again = continue_command(args, stop)
    if again is not None:
        verb = "resume with" if "--resume" in again else "continue with"
        parts.append(f"{verb}: {shlex.join(again)}" + (f" (under torchrun with {processes} processes, as before)"
                                                      if processes > 1 else ""))
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from respkd import distributed

    try:
        # under torchrun a signal is only noted, and the processes stop together (respkd.preemption)
        with preemption.handle_signals(at_once=distributed.world_size() == 1):
            check_launch(args.command)
            return args.func(args)
    except ReportedElsewhere as err:  # under torchrun: process 0 printed the error
        return err.exit_status
    except RespkdError as err:
        print(f"respkd: error: {' '.join(str(err).split())}", file=sys.stderr)  # one line, whatever the message held
        return err.exit_status
    except Stopped as stop:
        if distributed.is_main_process():
            print(stop_line(args, stop, distributed.world_size()), file=sys.stderr, flush=True)
        return stop.exit_status
    except OSError as err:  # a path given on the command line that no file system can name (configs check theirs)
        if err.errno != errno.ENAMETOOLONG:
            raise
        print(f"respkd: error: {err.strerror}: '{shorten(str(err.filename))}'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a SIGINT outside the handlers' reach (another thread)
        print("respkd: interrupted", file=sys.stderr)
        return 130
    finally:
        if "torch.distributed" in sys.modules:  # leave a torchrun process group, also after an error
            distributed.cleanup()


if __name__ == "__main__":
    sys.exit(main())
