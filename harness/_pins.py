"""OpenMP thread-pinning settings of the user's environment, kept for the nodes only.

Imported by ``harness/__init__.py`` before anything in the package imports torch. With
``OMP_PROC_BIND`` (or ``OMP_PLACES``, ``GOMP_CPU_AFFINITY``, ``KMP_AFFINITY``) in its environment, libgomp
pins the main thread of the process to one CPU as torch loads, and every node the harness then starts
inherits that one CPU (``sched_getaffinity`` of the harness narrows to one CPU at ``import torch``).
So they are taken out of this process's environment here, and ``harness.runner.node_env`` gives them
back to the nodes, where a user's own setting wins as before.
"""

from __future__ import annotations

import os

#: The ones that name CPUs themselves (the placement policy leaves CPU sets to a user who sets them).
CPU_NAMING_VARIABLES = ("OMP_PLACES", "GOMP_CPU_AFFINITY", "KMP_AFFINITY")
PIN_VARIABLES = ("OMP_PROC_BIND", *CPU_NAMING_VARIABLES)
USER_PINS: dict[str, str] = {key: os.environ.pop(key) for key in PIN_VARIABLES if key in os.environ}
