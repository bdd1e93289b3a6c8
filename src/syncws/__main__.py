"""``python -m syncws``: see :mod:`syncws.cli`."""

import sys

from .cli.main import main

sys.exit(main())
