"""``python -m poise_verl.ablate``: see the package docstring."""

import sys

from poise_verl.ablate.cli import main

if __name__ == "__main__":
    sys.exit(main())
