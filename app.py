"""The EDT web explorer: `python app.py [options]`, the same page as `edt-lab app` (see edt_lab/commands/app.py)."""

import sys

from edt_lab.commands.app import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
