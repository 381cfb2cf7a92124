"""``python -m headwater``: the same command line as the ``headwater`` script."""

import sys

from .cli import main

sys.exit(main())
