"""``python -m medvl`` (used by ``torchrun -m medvl train ...``)."""

import sys

from medvl.cli import main

sys.exit(main())
