"""``python -m models`` is the training command (the same as ``python -m harness train``)."""

import sys

from models.train import main

sys.exit(main(prog="python -m models"))
