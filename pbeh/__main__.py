"""``python -m pbeh``: the command line (see :mod:`pbeh.cli`)."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
