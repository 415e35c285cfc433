"""``python -m zipmount``: the same as the ``zipmount`` command."""

import sys

from .cli import main

sys.exit(main())
