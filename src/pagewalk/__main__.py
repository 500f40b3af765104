"""`python -m pagewalk`: see `pagewalk.cli`."""

import sys

from .cli import main

sys.exit(main())
