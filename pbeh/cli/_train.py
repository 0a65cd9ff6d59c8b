"""``pbeh train``: build the trainer from the options, train task after task (or all at once for ``joint``), resume,
write the run files and print the per-task lines, matrices and summary; also the rank logic under ``torchrun``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .._version import __version__
from ._arguments import method_names
from ._output import matrix_tables, print_json, report_line, summary_table
from ._setup import UserError, load_stream, protocol_name, set_threads


def train(args: argparse.Namespace, progress: dict[str, bool]) -> int:
    """``pbeh train``; under ``torchrun --nproc_per_node N -m pbeh train ...`` every process runs it in one process
    group (docs/distributed.md): rank 0 prints and writes the run files, the other ranks train silently."""
    import contextlib
    import os

    from ..training.distributed import init_from_env

    try:
        ctx = init_from_env()
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"torchrun environment: {exc}") from exc
    if ctx is None:
        return train_in_process(args, progress, None)
    import torch.distributed

    try:
        if ctx.is_main:
            return train_in_process(args, progress, ctx)
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            return train_in_process(args, progress, ctx)
    finally:
        torch.distributed.destroy_process_group()


def train_in_process(args: argparse.Namespace, progress: dict[str, bool], ctx: Any) -> int:
    """``pbeh train`` in this process (``ctx``: the torchrun context, or None outside torchrun)."""
    from ..baselines import build_trainer
    from ..serialization import write_json
    from ..trainer import TrainerConfig

    set_threads(args.threads)
    stream = load_stream(args)
    if args.method not in method_names():  # pragma: no cover - argparse choices
        raise UserError(f"--method: expected one of {method_names()}, got {args.method!r}")
    if args.protocol == "synthetic" and not args.json:
        print("Synthetic stream: seeded random multi-label data, not a real benchmark (see the docs).")
    if not args.json:
        print(stream.describe())
        print()
    try:
        base = TrainerConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            eval_k=None if args.eval_k == 0 else args.eval_k,
            eval_every=args.eval_every,
            select_on=args.select_on,
            samples_per_prompt=args.samples_per_prompt,
            prompts_per_task=args.prompts_per_task,
            show_progress=False,  # the command prints its own per-task lines, numbered 1..T
            seed=args.seed,
            prototype_replay=args.prototype_replay,
            prototype_noise=args.prototype_noise,
            replay_spread=args.replay_spread,
            prototype_clusters=args.prototype_clusters,
            class_prior=_class_prior(args.class_prior),
            prior_targets=args.prior_targets,
            old_class_targets=args.old_class_targets,
            later_task_head_lr_scale=args.head_lr_scale,
            similarity_target=args.similarity_target,
            lr_fan_in=None if args.lr_fan_in == 0 else args.lr_fan_in,
            ties=args.ties,
        )
    except (TypeError, ValueError) as exc:
        raise UserError(f"training options: {exc}") from exc
    n_tasks = len(stream)
    say = (lambda *a, **k: None) if (args.quiet or args.json) else print

    def on_task(report: Any) -> None:
        say(report_line(report, n_tasks), flush=True)
        following = report.task + 1
        if following < n_tasks and args.method != "joint":
            say(
                f"training task {following + 1}/{n_tasks} {stream[following].name} ({args.epochs} epochs) ...",
                flush=True,
            )

    trainer = build_trainer(
        args.method,
        stream,
        n_bits=args.bits,
        hidden_dims=tuple(args.hidden),
        config=base,
        rho=args.rho,
        delta=args.delta,
        seed=args.seed,
        extension_policy=extension_rule(args),
        loss_weight_overrides={
            name: value
            for name, value in (
                ("class_centers", args.class_centers),
                ("stored_codes", args.stored_codes),
                ("previous_model", args.previous_model),
            )
            if value is not None
        },
        checkpoint_dir=args.out,
        keep_task_checkpoints=args.keep_task_checkpoints,
        callbacks=[on_task],
    )
    if ctx is not None and ctx.device.type == "cuda":
        trainer.model.to(ctx.device)  # one process per GPU: rank r trains on cuda:<LOCAL_RANK>
    main_process = ctx is None or ctx.is_main
    previous = args.out / "run.json"
    if previous.is_file() and not args.no_resume and (args.out / "latest.json").is_file():
        from ..serialization import read_json

        before = read_json(previous, what="run description", expect=dict)
        now = {"protocol": protocol_name(args), "method": args.method, "task_names": [t.name for t in stream]}
        changed = [k for k, v in now.items() if before.get(k) != v]
        if changed:
            raise UserError(
                f"--out: {args.out} holds a run with another {', '.join(changed)} "
                f"({', '.join(f'{k}={before.get(k)!r}' for k in changed)}); resume it with the same options, or "
                "pass --no-resume (which overwrites it) or another --out"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    if ctx is not None:
        from ..training.distributed import barrier

        barrier(ctx)  # every rank has checked the previous run.json before rank 0 replaces it
    if main_process:  # under torchrun, rank 0 writes the run files
        write_json(
            args.out / "run.json",
            {
                "pbeh_kind": "cli_run",
                "format_version": 1,
                "pbeh_version": __version__,
                "protocol": protocol_name(args),
                "data_dir": None if args.data_dir is None else str(args.data_dir),
                "method": args.method,
                "n_tasks": n_tasks,
                "task_names": [t.name for t in stream],
                "label_names": list(stream.label_names) if stream.label_names is not None else None,
                "argv": sys.argv[1:],
            },
        )
    progress["training"] = True
    if args.method == "joint":
        trainer.checkpoint_dir = None
        say("joint training: all tasks at once (the upper bound; not continual)")
        trainer.fit([stream.joint()], resume=False)
        trainer = trainer.evaluate_stream(stream)
        if main_process:
            trainer.save(args.out / "joint")
            write_json(args.out / "latest.json", {"directory": "joint", "tasks_done": 1})
    else:
        if not args.no_resume and (args.out / "latest.json").is_file():
            done = json.loads((args.out / "latest.json").read_text()).get("tasks_done", "?")
            say(f"resuming {args.out}: {done} of {n_tasks} task(s) already done")
            first = int(done) if isinstance(done, int) else 0
        else:
            first = 0
        if first < n_tasks:
            say(f"training task {first + 1}/{n_tasks} {stream[first].name} ({args.epochs} epochs) ...", flush=True)
        trainer.fit(stream, resume=not args.no_resume)
    progress["training"] = False
    summary = trainer.summary()
    if main_process:
        trainer.matrix.save_json(args.out / "matrix.json")
        trainer.matrix.to_csv(args.out / "matrix.csv")
    if args.json:
        print_json(summary)
        return 0
    print()
    print(matrix_tables(trainer.matrix, [t.name for t in stream]))
    print()
    print(summary_table(summary, [t.name for t in stream]))
    print(f"\nsaved to {args.out} (pbeh describe {args.out}; pbeh evaluate {args.out})")
    return 0


def extension_rule(args: argparse.Namespace) -> Any:
    """The extension policy of ``--extension-rule`` (None: the method's own, the mode-centre rule or never)."""
    if args.extension_rule == "mode-center" or args.method in ("fixed-length", "finetune", "joint"):
        return None
    from ..extension import make_extension_policy

    try:
        return make_extension_policy(args.extension_rule, rho=args.rho, delta=args.delta)
    except (TypeError, ValueError) as exc:
        raise UserError(f"--extension-rule {args.extension_rule}: {exc}") from exc


def _class_prior(values: list[float]) -> float | dict[str, float]:
    """``--class-prior``: one weight for both modalities, or the image and then the text weight."""
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return {"image": values[0], "text": values[1]}
    raise UserError(f"--class-prior: expected one weight or two (image, text), got {len(values)}: {values}")
