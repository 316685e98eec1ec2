"""The hosts file (``--hosts hosts.toml``): which machine runs each node, and how the harness reaches it.

A table per node (``[test]``, ``[edge]``, ``[cloud]``), each either ``local = true`` (the machine the
harness runs on) or reached with the system OpenSSH client (``host``, ``user``, ``port``, ``key``). A
node on another host writes the files the harness reads (the test node's records) into the run's
folder there, and the harness fetches them back over ssh::

    known_hosts = "known_hosts"          # optional: a file the harness keeps (new hosts are added)

    [test]
    local = true                         # or on a host, as the edge (often the cloud's server)

    [edge]
    host = "192.168.1.20"                # ssh destination
    user = "pi"
    key = "~/.ssh/localexit_ed25519"
    listen = "0.0.0.0"                   # where the node listens (default 0.0.0.0)
    address = "192.168.1.20"             # where the other nodes reach it (default: host)
    project = "/home/pi/localexit"       # the project there; python: <project>/.venv/bin/python
    tls_cert = "/home/pi/tls/edge.pem"   # optional: mutual TLS, paths on that host, all three or none
    tls_key = "/home/pi/tls/edge.key"
    tls_ca = "/home/pi/tls/ca.pem"

Relative paths of this machine (``key``, ``known_hosts``) are relative to the hosts file. ssh runs with
``BatchMode`` (a key, never a password prompt), ``StrictHostKeyChecking=accept-new`` (a host seen before
must keep its key) and no terminal, so a remote node's stdin, stdout, stderr and exit status flow
through it as a local one's do. Everything here is plain data and argv builders; running them is
``harness.remote_testbed``'s.
"""

from __future__ import annotations

import importlib
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netem.cleanup import ROLES

from .errors import HarnessError

HOST_ROLES = ROLES
#: Where each host keeps the harness's per-run folders (pid files, the token, the qdiscs it added); not
#: named like a run's log folder (``localexit-…``), which ``harness clean`` removes once its run is dead.
DEFAULT_STATE_DIR = "/tmp/localexit.hosts"
#: How long ssh may take to connect before the host counts as unreachable.
CONNECT_TIMEOUT_S = 10
#: A dead connection is noticed within about ``interval × count`` seconds (ssh's keep-alives).
SERVER_ALIVE = (5, 3)
SSH = "ssh"
_KEYS = {
    "local", "host", "user", "port", "key", "listen", "address", "project", "python", "state_dir",
    "tls_cert", "tls_key", "tls_ca",
}  # fmt: skip


class HostsError(HarnessError):
    """A hosts file or a host that cannot be used: malformed, unreachable, without the project, or with
    another version of it (exit code 2, before anything is started)."""


@dataclass(frozen=True)
class NodeHost:
    """Where one node runs: this machine (``local``) or an ssh destination, with its project folder."""

    role: str
    local: bool = False
    host: str | None = None
    user: str | None = None
    port: int = 22
    key: Path | None = None
    listen: str = "0.0.0.0"
    address: str | None = None
    project: str | None = None
    python: str | None = None
    state_dir: str = DEFAULT_STATE_DIR
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None

    def __post_init__(self) -> None:
        if self.role not in HOST_ROLES:
            raise ValueError(f"unknown node {self.role!r}: the nodes are {', '.join(HOST_ROLES)}")
        if self.local and self.host is not None:
            raise ValueError(f"[{self.role}]: give either local = true or host, not both")
        if not self.local and not self.host:
            raise ValueError(f"[{self.role}]: give host (an ssh destination) or local = true")
        if self.host is not None and self.host.startswith("-"):
            raise ValueError(f"[{self.role}]: host {self.host!r} must not start with '-'")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"[{self.role}]: port {self.port} is out of range 1..65535")
        if not self.local and not self.project:
            raise ValueError(f"[{self.role}]: give project, the project's folder on {self.host}")
        tls = [self.tls_cert, self.tls_key, self.tls_ca]
        if any(tls) and not all(tls):
            raise ValueError(f"[{self.role}]: TLS needs tls_cert, tls_key and tls_ca together")

    @property
    def destination(self) -> str:
        """``user@host`` as ssh takes it (``local`` for this machine)."""
        if self.local or self.host is None:
            return "local"
        return f"{self.user}@{self.host}" if self.user else self.host

    @property
    def reach(self) -> str:
        """The address at which the other nodes reach this one."""
        return self.address or self.host or "127.0.0.1"

    @property
    def interpreter(self) -> str | None:
        """The Python of the project on that host (None: this machine's, the harness's own)."""
        if self.python:
            return self.python
        return f"{self.project.rstrip('/')}/.venv/bin/python" if self.project else None

    @property
    def tls_options(self) -> list[str]:
        """The node's ``--tls-cert/--tls-key/--tls-ca`` options ([] without TLS)."""
        if not self.tls_cert:
            return []
        return ["--tls-cert", self.tls_cert, "--tls-key", str(self.tls_key), "--tls-ca", str(self.tls_ca)]

    def label(self) -> str:
        """``edge (pi@192.168.1.20:22)``: the node and where it runs, for messages."""
        if self.local:
            return f"{self.role} (this machine)"
        return f"{self.role} ({self.destination}:{self.port})"


@dataclass(frozen=True)
class HostsFile:
    """A parsed hosts file: one :class:`NodeHost` per node, and ssh's known-hosts file."""

    path: Path
    nodes: Mapping[str, NodeHost] = field(default_factory=dict)
    known_hosts: Path | None = None

    def __post_init__(self) -> None:
        missing = [role for role in HOST_ROLES if role not in self.nodes]
        if missing:
            raise ValueError(f"no [{'], ['.join(missing)}] table: every node needs one")
        tls = {role: bool(node.tls_cert) for role, node in self.nodes.items()}
        if len(set(tls.values())) > 1:
            without = ", ".join(role for role, on in tls.items() if not on)
            raise ValueError(f"TLS is given for some nodes but not for {without}: all three or none")

    def node(self, role: str) -> NodeHost:
        return self.nodes[role]

    @property
    def tls(self) -> bool:
        return any(node.tls_cert for node in self.nodes.values())

    def remote(self) -> list[NodeHost]:
        """The nodes reached over ssh."""
        return [node for node in self.nodes.values() if not node.local]

    def describe(self) -> dict[str, Any]:
        """Where each node ran, for the results file."""
        return {
            role: {
                "where": "local" if node.local else f"{node.destination}:{node.port}",
                "listen": node.listen,
                "address": node.reach,
                "project": node.project,
                "tls": bool(node.tls_cert),
            }
            for role, node in self.nodes.items()
        }


def _toml() -> Any:
    # tomllib is in the standard library from Python 3.11; on 3.10 the same parser is the tomli package
    try:
        return importlib.import_module("tomllib")
    except ModuleNotFoundError:
        return importlib.import_module("tomli")


def _local_path(base: Path, text: Any, what: str) -> Path:
    if not isinstance(text, str) or not text:
        raise ValueError(f"{what} must be a path (a string)")
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def parse_hosts(data: Mapping[str, Any], path: Path) -> HostsFile:
    """A :class:`HostsFile` from the parsed TOML ``data`` of ``path`` (``ValueError`` saying what is wrong)."""
    base = path.parent
    unknown = [key for key in data if key not in (*HOST_ROLES, "known_hosts")]
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)}: the tables are [test], [edge] and [cloud]")
    nodes: dict[str, NodeHost] = {}
    for role in HOST_ROLES:
        table = data.get(role)
        if table is None:
            continue
        if not isinstance(table, dict):
            raise ValueError(f"[{role}] must be a table")
        bad = sorted(set(table) - _KEYS)
        if bad:
            raise ValueError(f"[{role}]: unknown key(s) {', '.join(bad)} (known: {', '.join(sorted(_KEYS))})")
        values = dict(table)
        if "key" in values:
            values["key"] = _local_path(base, values["key"], f"[{role}] key")
        for name in ("host", "user", "listen", "address", "project", "python", "state_dir"):
            if name in values and not isinstance(values[name], str):
                raise ValueError(f"[{role}] {name} must be a string")
        if "port" in values and (not isinstance(values["port"], int) or isinstance(values["port"], bool)):
            raise ValueError(f"[{role}] port must be an integer")
        if "local" in values and not isinstance(values["local"], bool):
            raise ValueError(f"[{role}] local must be true or false")
        if values.get("local"):  # (this machine's files: relative to the hosts file, as key is)
            for name in ("tls_cert", "tls_key", "tls_ca"):
                if name in values:
                    values[name] = str(_local_path(base, values[name], f"[{role}] {name}"))
        nodes[role] = NodeHost(role=role, **values)
    known = data.get("known_hosts")
    return HostsFile(
        path=path,
        nodes=nodes,
        known_hosts=_local_path(base, known, "known_hosts") if known is not None else None,
    )


def load_hosts(path: Path) -> HostsFile:
    """Read and check the hosts file at ``path``; ``HostsError`` (one line) when it cannot be used."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise HostsError(f"cannot read the hosts file {path}: {exc.strerror or exc}") from exc
    toml = _toml()
    try:
        return parse_hosts(toml.loads(text), path)
    except toml.TOMLDecodeError as exc:
        raise HostsError(f"the hosts file {path} is not valid TOML: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise HostsError(f"hosts file {path}: {exc}") from exc


def ssh_argv(node: NodeHost, remote: Sequence[str], *, known_hosts: Path | None = None) -> list[str]:
    """``ssh`` running ``remote`` (an argv list, quoted for the remote shell) on ``node``'s host.

    No terminal (``-T``): stdin, stdout, stderr and the exit status are the remote command's. No
    password prompt (``BatchMode``); a host key not seen before is added to ``known_hosts``, a changed
    one refused (``accept-new``). Keep-alives end the session when the connection dies.
    """
    if node.local or node.host is None:
        raise ValueError(f"the {node.role} node runs on this machine: no ssh")
    interval, count = SERVER_ALIVE
    argv = [
        SSH, "-T",
        "-o", "BatchMode=yes",
        "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
        "-o", "StrictHostKeyChecking=accept-new",
        "-o", f"ServerAliveInterval={interval}",
        "-o", f"ServerAliveCountMax={count}",
        "-o", "LogLevel=ERROR",  # (no "Permanently added ..." lines in the nodes' logs)
        "-p", str(node.port),
    ]  # fmt: skip
    if known_hosts is not None:
        argv += ["-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null"]
    if node.key is not None:
        argv += ["-i", str(node.key), "-o", "IdentitiesOnly=yes"]
    if node.user:
        argv += ["-l", node.user]
    return [*argv, "--", node.host, shlex.join(remote)]
