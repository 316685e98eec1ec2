"""What the three node programs share: address parsing, logging, the event loop, signals, exit codes."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from models.errors import LocalExitError
from nodes.errors import UsageError

log = logging.getLogger(__name__)

TOKEN_ENV = "LOCALEXIT_TOKEN"


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
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from exc
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"the exit threshold must be in [0, 1], got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from exc
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


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
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")


def token_from(args: argparse.Namespace) -> str | None:
    token: str | None = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    return token


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


def settle_heap() -> None:
    """Collect once, then move every object that survived start-up (torch, the model, the dataset) to
    the garbage collector's permanent generation, so that no collection during the run scans them.

    Measured on the nodes (2-vCPU VM): a full collection of a process that has loaded torch and a model
    scans about 170 000 objects and takes 40-55 ms, and even a young-generation one took 0.5-0.9 ms. Either
    lands in the middle of a batch -- or, in another node, takes a core from the two-thread compute of
    one -- and shows up as a procedure several times its usual length. After this call, collections only
    see the run's own short-lived objects.
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
