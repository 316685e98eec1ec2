"""Entry point of the relay child process: ``python -m netem.run_relay``.

A separate module so that running it does not re-import ``netem.relay`` (which the package imports).
"""

import sys

from netem.relay import main

if __name__ == "__main__":
    sys.exit(main())
