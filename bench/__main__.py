"""``python -m bench``: the speed and gradient-fidelity report (:mod:`bench.report`)."""

import sys

from .report.cli import main

sys.exit(main())
