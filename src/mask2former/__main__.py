"""``python -m mask2former``: the ``mask2former`` command (also what ``torchrun -m mask2former`` runs)."""

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
