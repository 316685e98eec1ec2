"""Entry point of a container that shapes its own link, then runs a node: ``python -m netem.run_shape``
(deploy/compose.yaml; see ``netem.docker.main``).

A separate module so that running it does not re-import ``netem.docker`` (which the package imports).
"""

import sys

from netem.docker import main

if __name__ == "__main__":
    sys.exit(main())
