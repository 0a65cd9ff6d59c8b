"""``pbeh describe``: a saved run (configuration, bits per task, sizes, scores) or, without a run, the tasks of a
stream."""

from __future__ import annotations

import argparse
import json

from ._output import decision_text, format_table, format_value, print_json, summary_from_state, summary_table
from ._setup import load_stream


def describe(args: argparse.Namespace) -> int:
    """``pbeh describe [RUN]``: print a saved run, or without RUN the tasks of ``--protocol``."""
    if args.run is None:
        stream = load_stream(args)
        if args.json:
            print_json(
                {
                    "name": stream.name,
                    "tasks": [
                        {
                            "task": t + 1,
                            "name": task.name,
                            "classes": list(task.classes),
                            "train": len(task.train),
                            "query": len(task.query),
                            "database": len(task.database),
                        }
                        for t, task in enumerate(stream)
                    ],
                }
            )
        else:
            print(stream.describe())
        return 0
    from .._run import read_run

    run = read_run(args.run)
    trainer = run.trainer
    config = trainer.get("config", {})
    reports = trainer.get("reports", [])
    stored = trainer.get("stored", [])
    summary = summary_from_state(trainer)
    sizes = {p.name: p.stat().st_size for p in run.state.rglob("*") if p.is_file()}
    if args.json:
        print_json(
            {
                "run": str(run.run),
                "state": str(run.state),
                "info": run.info,
                "config": config,
                "extension_policy": trainer.get("extension_policy"),
                "stored": stored,
                "summary": summary,
                "bytes_on_disk": sum(sizes.values()),
            }
        )
        return 0
    info = run.info
    print(f"run {run.run} (newest state: {run.state.name})")
    if info:
        print(
            f"  protocol {info.get('protocol')}, method {info.get('method')}, {info.get('n_tasks')} task(s) in the "
            f"stream, {len(reports)} done; pbeh {info.get('pbeh_version')}"
        )
    policy = trainer.get("extension_policy", {})
    print(f"  extension policy: {json.dumps(policy, sort_keys=True)}; cross-length score: {trainer.get('index_score')}")
    keys = (
        "epochs",
        "batch_size",
        "lr",
        "select_on",
        "eval_k",
        "eval_every",
        "samples_per_prompt",
        "prompts_per_task",
        "seed",
    )
    print("  config: " + ", ".join(f"{k}={config.get(k)}" for k in keys if k in config))
    print()
    rows = [["task", "name", "bits", "prompts", "train", "database", "best epoch", "mAP i→t", "mAP t→i", "extension"]]
    for r in reports:
        rows.append(
            [
                str(r["task"] + 1),
                str(r["name"]),
                str(r["n_bits"]),
                str(r["n_prompts"]),
                str(r["n_train"]),
                str(r["n_database"]),
                f"{r['best_epoch']}/{r['epochs']}",
                format_value(r["map_i2t"][-1]),
                format_value(r["map_t2i"][-1]),
                decision_text(r.get("extension", {})),
            ]
        )
    print(format_table(rows, right=[True, False, True, True, True, True, True, True, True, False]))
    n_items = sum(len(ids) for ids in run.stored_ids)
    print()
    print(
        f"stored: {n_items} item(s) per modality in {len(stored)} task segment(s); "
        f"{sum(sizes.values()) / 1e6:.2f} MB on disk in {run.state.name}"
    )
    print()
    print(summary_table(summary, [str(r["name"]) for r in reports]))
    return 0
