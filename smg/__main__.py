"""`python -m smg`: the same as the `smg` command.

Guarded so that importing this module (multiprocessing's spawn re-imports
the main module, as do some tools) does not start a gateway.
"""

import sys

from smg.cli import main

if __name__ == "__main__":
    sys.exit(main())
