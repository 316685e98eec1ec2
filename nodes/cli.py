"""What the three node programs share: address parsing, logging, the event loop, signals, exit codes."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from contract.errors import LocalExitError
from contract.rules import check_threshold
from nodes.errors import UsageError
from nodes.transport import TlsFiles

log = logging.getLogger(__name__)

TOKEN_ENV = "LOCALEXIT_TOKEN"

#: Environment of the node programs, each applied unless the environment already sets it: by the harness
#: to the nodes it starts, and by a node program started on its own (:func:`apply_env_defaults`), so a
#: standalone node runs as a harness-started one. Why each: docs/design-notes.md, "Node process settings".
NODE_ENV_DEFAULTS: Mapping[str, str] = MappingProxyType(
    {
        # glibc keeps each batch's activations instead of returning them to the kernel and faulting
        # fresh zeroed pages in again for the next batch.
        "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=268435456",
        # an idle OpenMP worker spins through one batch's layers, then sleeps instead of taking the
        # CPU another node computes on.
        "GOMP_SPINCOUNT": "30000",
        # each OpenMP thread stays on a CPU of its own (within the CPUs the process may use).
        "OMP_PROC_BIND": "true",
    }
)
#: Defaults a role does without: the test node computes nothing, and libgomp would pin a bound
#: process's main thread as it loads, which slowed the run's start-up.
UNBOUND_ROLES: Mapping[str, frozenset[str]] = MappingProxyType({"test": frozenset({"OMP_PROC_BIND"})})
#: Set in the environment of a node program that re-executed itself to apply missing defaults: what it
#: applied (``NAME=value``, comma-separated), for its log and so that it never re-executes twice.
APPLIED_ENV = "LOCALEXIT_NODE_ENV_APPLIED"


def env_defaults(role: str) -> dict[str, str]:
    """The :data:`NODE_ENV_DEFAULTS` that apply to a node of ``role`` (``test``, ``edge``, ``cloud``)."""
    skip = UNBOUND_ROLES.get(role, frozenset())
    return {key: value for key, value in NODE_ENV_DEFAULTS.items() if key not in skip}


def missing_env_defaults(role: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The defaults of ``role`` that ``environ`` does not set (a setting of its own always wins)."""
    return {key: value for key, value in env_defaults(role).items() if key not in environ}


def apply_env_defaults(role: str, argv: Sequence[str] | None) -> None:
    """Give this node program the defaults missing from its environment, by re-executing it with them.

    ``GLIBC_TUNABLES`` is read when the process starts and libgomp reads its settings when torch loads,
    so setting them in ``os.environ`` now would come too late: the program runs itself again (the same
    interpreter, options and arguments, ``sys.orig_argv``) with the completed environment. The new
    process logs what it applied. Only a node reading its own command line (``argv`` None, as
    ``main()`` is called by ``python -m nodes.edge`` or the ``localexit-edge`` script) re-executes: one
    given an argument list runs inside another program (a test), which must not be replaced.
    """
    applied = os.environ.pop(APPLIED_ENV, None)
    missing = missing_env_defaults(role, os.environ)
    if applied is not None:
        log.info("%s node: applied the environment defaults missing at start: %s", role, applied)
        if missing:  # (something dropped them on the way: run on rather than loop)
            log.warning("%s node: still missing %s after re-executing", role, ", ".join(missing))
        return
    if not missing or argv is not None:
        return
    env = {**os.environ, **missing, APPLIED_ENV: ",".join(f"{k}={v}" for k, v in missing.items())}
    log.debug("%s node: re-executing with %s", role, ", ".join(missing))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, list(sys.orig_argv), env)


def parse_hostport(text: str, *, what: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) → (host, port); :class:`UsageError` if malformed."""
    host, sep, port_s = text.rpartition(":")
    if not sep or not host or not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise UsageError(f"{what} must look like HOST:PORT (e.g. 127.0.0.1:9000), got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_s)


def hostport_arg(text: str) -> tuple[str, int]:
    try:
        return parse_hostport(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from exc
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def threshold_arg(text: str) -> float:
    """``--threshold``: where T enters a node process from its command line."""
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from exc
    try:
        return check_threshold(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from exc
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


def device_arg(text: str) -> str:
    """``--device``: its spelling (whether this machine has it is checked when the model loads)."""
    from models.options import check_device_name

    try:
        return check_device_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_server_args(parser: argparse.ArgumentParser, role: str, runs: str) -> None:
    """The options the edge and the cloud share: where to listen, the checkpoint and the exit in force."""
    parser.add_argument(
        "--listen",
        type=hostport_arg,
        default=("127.0.0.1", 0),
        metavar="HOST:PORT",
        help="address to listen on (default 127.0.0.1:0, a free port; see the READY line)",
    )
    if role == "edge":
        parser.add_argument(
            "--cloud", type=hostport_arg, required=True, metavar="HOST:PORT", help="the cloud node's address"
        )
    parser.add_argument(
        "--checkpoint", required=True, help="model checkpoint (models.save_checkpoint format)"
    )
    parser.add_argument(
        "--exit",
        type=nonneg_int,
        required=True,
        metavar="K",
        help=f"the local exit in force (the {role} runs {runs}); 0 = all in the cloud",
    )
    parser.add_argument(
        "--model-spec",
        metavar="MODULE:FACTORY",
        help="the factory that built the checkpoint's model, for a model not of this package "
        "(models/protocol.py)",
    )
    parser.add_argument(
        "--device",
        type=device_arg,
        default="cpu",
        help="where the model runs: cpu (default), cuda or cuda:N",
    )


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--token",
        default=None,
        help=f"shared token every node must present (default: ${TOKEN_ENV} if set); "
        "refuses strangers on deployments across machines, it is not encryption",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=30.0,
        help="seconds to wait for any single network operation (default 30)",
    )
    tls = parser.add_argument_group("TLS (all three or none; the same CA on every node: docs/hosts.md)")
    tls.add_argument("--tls-cert", type=Path, default=None, metavar="PEM", help="this node's certificate")
    tls.add_argument("--tls-key", type=Path, default=None, metavar="PEM", help="its private key")
    tls.add_argument(
        "--tls-ca", type=Path, default=None, metavar="PEM", help="the CA that signed every node's certificate"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")


def token_from(args: argparse.Namespace) -> str | None:
    token: str | None = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    return token


def tls_from(args: argparse.Namespace) -> TlsFiles | None:
    """The node's TLS files, or None without TLS; :class:`UsageError` when only some are given."""
    given = {name: getattr(args, f"tls_{name}", None) for name in ("cert", "key", "ca")}
    if not any(given.values()):
        return None
    missing = [f"--tls-{name}" for name, value in given.items() if value is None]
    if missing:
        raise UsageError(
            f"TLS needs --tls-cert, --tls-key and --tls-ca together: {', '.join(missing)} missing"
        )
    return TlsFiles(cert=args.tls_cert, key=args.tls_key, ca=args.tls_ca)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


def settle_heap() -> None:
    """Collect once, then move every object that survived start-up (torch, the model, the dataset) to
    the garbage collector's permanent generation, so that no collection during the run scans them.

    A full collection of a process that has loaded torch and a model scans the hundreds of thousands of
    objects start-up made, which takes tens of milliseconds (docs/design-notes.md); it would land in the
    middle of a batch -- or, in another node, take a core from the compute of one -- and show up as a
    procedure several times its usual length. After this call, collections only see the run's own
    short-lived objects.
    """
    gc.collect()
    gc.freeze()


def print_ready(host: str, port: int) -> None:
    """The one line on stdout the harness waits for."""
    shown = f"[{host}]" if ":" in host else host
    sys.stdout.write(f"READY {shown}:{port}\n")
    sys.stdout.flush()


def stop_on_signals() -> asyncio.Event:
    """An event set on SIGTERM or SIGINT (graceful stop); call from inside the running loop."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def run_coroutine(coro: Coroutine[Any, Any, int]) -> int:
    """Run the node's main coroutine on uvloop where available, asyncio otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    result: int = uvloop.run(coro)
    return result


def run_entry(coro: Coroutine[Any, Any, int]) -> int:
    """Run ``coro`` and map errors to exit codes: 2 for bad usage or input, 1 for run-time failures,
    each with one ``error: ...`` line on stderr and no traceback."""
    try:
        return run_coroutine(coro)
    except LocalExitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 1
