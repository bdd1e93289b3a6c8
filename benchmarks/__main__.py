"""``python -m benchmarks``: run the benchmark (see ``benchmarks.run``)."""

import sys

from .run import main

sys.exit(main())
