"""``python -m ast_audio``: the same as the ``ast-audio`` command (what ``torchrun -m`` runs)."""

import sys

from .cli.main import main

sys.exit(main())
