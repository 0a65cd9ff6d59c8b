"""``pbeh evaluate``: a saved run's matrices, per-task lines and summary (or the summary as JSON; the matrices as
CSV on request)."""

from __future__ import annotations

import argparse

from ._output import matrix_tables, print_json, report_line, summary_from_state, summary_table


def evaluate(args: argparse.Namespace) -> int:
    """``pbeh evaluate RUN``: print a saved run's matrices, per-task lines and summary."""
    from .._run import read_run
    from ..metrics import ContinualMatrix
    from ..trainer import TaskReport

    run = read_run(args.run)
    matrix = ContinualMatrix.from_dict(run.trainer["matrix"])
    summary = summary_from_state(run.trainer)
    if args.csv:
        matrix.to_csv(args.csv)
    if args.json:
        print_json(summary)
        return 0
    names = run.info.get("task_names") or run.task_names
    print(matrix_tables(matrix, names))
    print()
    reports = [TaskReport.from_dict(r) for r in run.trainer.get("reports", [])]
    for report in reports:
        print(report_line(report, len(names) or None))
    print()
    print(summary_table(summary, names))
    return 0
