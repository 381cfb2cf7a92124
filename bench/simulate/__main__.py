"""`python -m headwater.bench.simulate`: the same as `python -m headwater.bench simulate`."""

import sys

from . import main

sys.exit(main())
