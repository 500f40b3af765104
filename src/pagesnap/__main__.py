"""`python -m pagesnap`: see `pagesnap.cli`."""

import sys

from .cli import main

sys.exit(main())
