"""``python -m pinstream.recommend``: the same as ``python -m pinstream recommend``."""

import sys

from .cli import main

sys.exit(main())
