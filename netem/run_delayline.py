"""Entry point of the delayline child process: ``python -m netem.run_delayline``.

A separate module so that running it does not re-import ``netem.delayline`` (which the package imports).
"""

import sys

from netem.delayline import main

if __name__ == "__main__":
    sys.exit(main())
