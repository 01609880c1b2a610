"""``python -m shortcut_detect`` runs the ``shortcut-detect`` command."""

import sys

from shortcut_detect.cli import main

if __name__ == "__main__":
    sys.exit(main())
