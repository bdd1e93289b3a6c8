"""``python -m syncws``: see :mod:`syncws.cli`."""

import sys

from .cli import main

sys.exit(main())
