"""The `evomerge` command. User errors print `error: <one line>` and exit 2, with no traceback."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .demo import run_demo
from .errors import EvomergeError
from .evolve.config import load_config
from .evolve.report import print_table
from .fileio import DEFAULT_SHARD_SIZE
from .inspect import model_info
from .merge.plan import load_plan
from .merge.run import run_plan
from .parallel import distributed as dist
from .searches.plan import plan_stages, plan_table
from .searches.run import eval_model, evolve, export_run
from .vlm.extract import extract_language_model


def _cmd_info(args) -> int:
    for key, value in model_info(args.model_dir).items():
        print(f"{key:<14} {value}")
    return 0


def _cmd_extract_lm(args) -> int:
    out = extract_language_model(args.vlm_dir, args.out_dir, overwrite=args.overwrite)
    print(f"wrote {out}: the language model of {args.vlm_dir}")
    return 0


def _cmd_merge(args) -> int:
    plan = load_plan(args.config)  # every check that needs no tensor data, before any write
    for line in plan.warnings:
        print(f"warning: {line}", file=sys.stderr)
    out = run_plan(plan, args.out_dir, seed=args.seed, shard_size=args.shard_size,
                   overwrite=args.overwrite, quiet=args.quiet)
    if not args.quiet:
        print(f"wrote {out}: {plan.method.name}, {len(plan.ops)} tensors, "
              f"{plan.num_layers} layers, {plan.out_dtype or plan.read_dtype or 'input dtypes'}")
    return 0


def _cmd_evolve(args) -> int:
    distributed = args.coordinator or args.num_processes is not None or (
        args.process_id is not None) or args.distributed or os.environ.get(
        "JAX_COORDINATOR_ADDRESS")
    if distributed:
        if not dist.is_child():  # see distributed.py: the runtime aborts, the parent explains
            return dist.supervise(args.argv, args.process_id, args.coordinator, args.timeout)
        dist.initialize(args.coordinator, args.num_processes, args.process_id,
                        timeout_s=args.timeout, heartbeat_s=args.heartbeat)
    try:
        evolve(args.config, resume=args.resume, overwrite=args.overwrite)
    except EvomergeError:
        raise
    except Exception as exc:  # a collective failed: in a multi-process run, say how to go on
        failure = dist.peer_failure(exc) if distributed else None
        if failure is None:
            raise
        raise failure from None
    return 0


def _cmd_plan(args) -> int:
    plans = plan_stages(load_config(args.config), args.devices, args.device_memory, args.mesh,
                        seq_len=args.seq_len)  # refuses (one line) a layout that cannot fit
    for plan in plans:
        print_table(plan_table(plan))
    return 0


def _cmd_export(args) -> int:
    export_run(args.run_dir, args.out_dir, overwrite=args.overwrite, point=args.point)
    return 0


def _cmd_eval(args) -> int:
    if (args.config is None) == (args.lm_eval is None):
        raise EvomergeError("evomerge eval needs exactly one of --config CONFIG.yml (an evolve "
                            "config's tasks) and --lm-eval TASK[,TASK...] (lm-eval tasks)")
    if args.lm_eval is None:
        lm_only = [flag for flag, value in (("--include-path", args.include_path),
                                            ("--limit", args.limit),
                                            ("--apply-chat-template", args.apply_chat_template),
                                            ("--output", args.output)) if value]
        if lm_only:
            raise EvomergeError(f"{', '.join(lm_only)} only apply with --lm-eval")
        eval_model(args.model_dir, args.config, splits=tuple(args.split or ("validation", "test")))
        return 0
    if args.split:
        raise EvomergeError("--split applies to --config tasks, not to --lm-eval")
    tasks = [t.strip() for t in args.lm_eval.split(",") if t.strip()]
    if not tasks:
        raise EvomergeError("--lm-eval needs at least one task name")
    if args.limit is not None and args.limit < 1:
        raise EvomergeError(f"--limit must be at least 1, got {args.limit}")
    from .lm_eval import run_lm_eval  # lm-eval is optional: imported only here
    run_lm_eval(args.model_dir, tasks, include_path=args.include_path, limit=args.limit,
                apply_chat_template=args.apply_chat_template, output=args.output,
                batch_size=args.batch_size)
    return 0


def _cmd_demo(args) -> int:
    if args.vlm:
        from .demo_vlm import run_vlm_demo

        run_vlm_demo(args.out or Path("runs/demo-vlm"), quick=args.quick, seed=args.seed)
    else:
        run_demo(args.out or Path("runs/demo"), quick=args.quick, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evomerge", description="Evolutionary model merging in JAX: merge, evolve, export.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = sub.add_parser("info", help="describe a Hugging Face model dir without loading it")
    info.add_argument("model_dir", type=Path)
    info.set_defaults(func=_cmd_info)
    extract = sub.add_parser(
        "extract-lm", help="write a LLaVA dir's language model as a plain text-LM dir")
    extract.add_argument("vlm_dir", type=Path, metavar="VLM_DIR")
    extract.add_argument("out_dir", type=Path, metavar="OUT")
    extract.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    extract.set_defaults(func=_cmd_extract_lm)
    evolve = sub.add_parser("evolve", help="search merge parameters with an evosax strategy")
    evolve.add_argument("config", type=Path, help="evolve config (YAML)")
    evolve.add_argument("--resume", action="store_true", help="continue the run in output_dir")
    evolve.add_argument("--overwrite", action="store_true", help="replace a run in output_dir")
    hosts = evolve.add_argument_group(
        "several processes (hosts)", "start every process with the same config and flags (each "
        "with its own --process-id); process 0 writes the run dir, which must be on a shared "
        "file system for --resume")
    hosts.add_argument("--distributed", action="store_true",
                       help="join a TPU pod slice, Slurm or MPI job, or the JAX_COORDINATOR_ADDRESS "
                            "/ JAX_NUM_PROCESSES / JAX_PROCESS_ID variables (jax.distributed)")
    hosts.add_argument("--coordinator", metavar="HOST:PORT",
                       help="address of process 0's coordinator service")
    hosts.add_argument("--num-processes", type=int, metavar="N", help="processes in the run")
    hosts.add_argument("--process-id", type=int, metavar="I", help="this process, 0..N-1")
    hosts.add_argument("--timeout", type=int, default=300, metavar="SECONDS",
                       help="how long to wait for every process to join (default 300)")
    hosts.add_argument("--heartbeat", type=int, default=dist.HEARTBEAT_S, metavar="SECONDS",
                       help="a peer silent this long later counts as dead (default "
                            f"{dist.HEARTBEAT_S})")
    evolve.set_defaults(func=_cmd_evolve)
    plan = sub.add_parser(
        "plan", help="bytes per device of an evolve config's pass, without loading weights",
        description="Plan an evolve run's memory per device from config.json and safetensors "
                    "headers (no weights loaded): source weights, magnitude tables, merge "
                    "buffers, activations, KV caches, global tensors, logits, and the candidates "
                    "per device call. Exits 2 with what to change when it cannot fit.")
    plan.add_argument("config", type=Path, metavar="CONFIG.yml", help="evolve config (YAML)")
    plan.add_argument("--devices", type=int, metavar="N",
                      help="devices of the run (default: those of --mesh POPxMODEL, else 1)")
    plan.add_argument("--device-memory", metavar="SIZE",
                      help="memory of one device, e.g. 32GB, 16GiB, 80GB (default: this "
                           "machine's, as evolve sees it)")
    plan.add_argument("--mesh", metavar="POPxMODEL",
                      help="device mesh, e.g. 4x2 or auto (default: the config's compute.mesh)")
    plan.add_argument("--seq-len", type=int, default=256, metavar="TOKENS",
                      help="tokens per row (a generate task's prompt) assumed for a task whose "
                           "data files are absent (default 256)")
    plan.set_defaults(func=_cmd_plan)

    export = sub.add_parser("export", help="write a run's best candidate as a Hugging Face dir")
    export.add_argument("run_dir", type=Path)
    export.add_argument("out_dir", type=Path)
    export.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    export.add_argument("--point", type=int, metavar="K",
                        help="a pareto run: export point K of its front (pareto.json)")
    export.set_defaults(func=_cmd_export)
    evaluate = sub.add_parser(
        "eval", help="score a model dir on an evolve config's tasks or on lm-eval tasks",
        description="Score a model dir: on an evolve config's tasks (--config) or on "
                    "lm-evaluation-harness tasks (--lm-eval; needs the lm-eval extra).")
    evaluate.add_argument("model_dir", type=Path)
    evaluate.add_argument("--config", type=Path, help="evolve config (YAML)")
    evaluate.add_argument("--split", action="append", choices=("fitness", "validation", "test"),
                          help="split(s) to score with --config (default: validation and test)")
    lm = evaluate.add_argument_group("lm-eval tasks")
    lm.add_argument("--lm-eval", metavar="TASK[,TASK...]", help="lm-eval task or group names")
    lm.add_argument("--include-path", type=Path, metavar="DIR",
                    help="a dir of local lm-eval task YAMLs")
    lm.add_argument("--limit", type=int, metavar="N", help="score the first N docs of each task")
    lm.add_argument("--apply-chat-template", action="store_true",
                    help="render prompts with the model's chat template")
    lm.add_argument("--batch-size", type=int, default=8, metavar="N",
                    help="rows per device call (default 8)")
    lm.add_argument("--output", type=Path, metavar="FILE",
                    help="write lm-eval's results JSON here (atomically)")
    evaluate.set_defaults(func=_cmd_eval)
    demo = sub.add_parser("demo", help="the main job: build the demo zoo, evolve merges, compare")
    demo.add_argument("--out", type=Path, default=None,
                      help="output dir (default runs/demo, with --vlm runs/demo-vlm; the zoo is "
                           "built or reused under OUT/zoo)")
    demo.add_argument("--vlm", action="store_true",
                      help="EvoVLM: merge a tiny LLaVA (L1) with the L2 chat model (demo_vlm.py)")
    demo.add_argument("--quick", action="store_true", help="quick zoo and tiny searches (smoke run)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the zoo (default 0)")
    demo.set_defaults(func=_cmd_demo)
    merge = sub.add_parser(
        "merge", help="merge models from a mergekit-style YAML config into a Hugging Face dir",
        description="Merge models as a mergekit YAML config describes (model paths are local "
                    "dirs, relative to the current directory), tensor by tensor.")
    merge.add_argument("config", type=Path, metavar="CONFIG.yml",
                       help="the merge config (mergekit YAML)")
    merge.add_argument("out_dir", type=Path, metavar="OUT_DIR",
                       help="the output model dir (must not exist, unless --overwrite)")
    merge.add_argument("--seed", type=int, default=0,
                       help="seed of the random methods (dare_*, della*); default 0")
    merge.add_argument("--shard-size", default=DEFAULT_SHARD_SIZE, help="largest shard file, e.g. 5GB, 500MB")
    merge.add_argument("--overwrite", action="store_true",
                       help="replace out_dir if it exists (only once the new one is complete)")
    merge.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    merge.set_defaults(func=_cmd_merge)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except EvomergeError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the message holds
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
