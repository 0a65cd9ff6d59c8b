"""``pbeh plot``: draw a saved run's figures (see :func:`pbeh.plot.plot_run`) and print the files written."""

from __future__ import annotations

import argparse


def plot(args: argparse.Namespace) -> int:
    """``pbeh plot RUN``: write the figures and print their paths."""
    from ..plot import plot_run

    written = plot_run(args.run, args.out)
    for path in written:
        print(path)
    return 0
