"""Hosts for the multi-host tests without other machines: network namespaces on a bridge, each running
its own ``sshd`` (Debian's ``openssh-server``) with host and client keys made here.

    this machine (the harness, the test node: 10.79.X.1)
        ├── veth ── namespace lh<hex>-edge   10.79.X.2  sshd ──┐
        └── veth ── namespace lh<hex>-cloud  10.79.X.3  sshd ──┴── veth (the edge–cloud link)

Each host's address is on its loopback, reached over the veth that joins it to the other end, so no
packet is forwarded (this machine's firewall may drop forwarded and bridged traffic). The cloud's sshd
runs in a time namespace: CLOCK_MONOTONIC + 5000 s.

Every process an sshd starts inherits its namespaces, so the cloud node's monotonic clock is 5000 s
ahead of the test node's. The names start with ``lh`` (not the harness's ``lx``), so that no
``harness clean`` removes them from under a test. Everything is removed when the fixture ends.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = Path("/usr/sbin/sshd")
CLOUD_CLOCK_SHIFT_S = 5000
PROJECT = Path(__file__).resolve().parents[2]


def sshd_skip_reason() -> str | None:
    if not SSHD.exists() or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        return "needs Debian's openssh-server and openssh-client (sshd, ssh, ssh-keygen)"
    if shutil.which("unshare") is None:
        return "needs unshare (util-linux) for the time namespace"
    return None


def _run(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True)


@dataclass(frozen=True)
class Host:
    role: str
    netns: str
    address: str
    folder: Path  # its sshd's files; also its state folder for the harness (state/)

    @property
    def state_dir(self) -> Path:
        return self.folder / "state"


@dataclass(frozen=True)
class HostsNet:
    folder: Path
    key: Path
    hosts: dict[str, Host]
    procs: dict[str, subprocess.Popen[bytes]]

    @property
    def test_state_dir(self) -> Path:
        """The state folder of the test node, which runs on this machine."""
        return self.folder / "test-state"

    def hosts_file(
        self,
        *,
        tls: Mapping[str, Mapping[str, str]] | None = None,
        overrides: Mapping[str, Mapping[str, str]] | None = None,
        test_on: str | None = None,
    ) -> Path:
        """A hosts file: the test node here (``test_on``: on the host of that node instead), the edge
        and the cloud on their hosts (``overrides``: keys of a node's table to change; ``tls``: each
        node's tls_* keys)."""
        lines = ['known_hosts = "known_hosts"']
        if test_on is None:
            lines += ["", "[test]", "local = true", f'state_dir = "{self.test_state_dir}"']
            lines += [f'{name} = "{text}"' for name, text in (tls or {}).get("test", {}).items()]
        for role, host_role in (("test", test_on), ("edge", "edge"), ("cloud", "cloud")):
            if host_role is None:
                continue
            host = self.hosts[host_role]
            table: dict[str, str] = {
                "host": host.address,
                "user": "root",
                "key": str(self.key),
                "listen": host.address,
                "project": str(PROJECT),
                "state_dir": str(host.state_dir),
                **(tls or {}).get(role, {}),
                **(overrides or {}).get(role, {}),
            }
            lines += ["", f"[{role}]"]
            lines += [f'{name} = "{text}"' for name, text in table.items()]
        path = self.folder / f"hosts-{secrets.token_hex(3)}.toml"
        path.write_text("\n".join(lines) + "\n")
        return path


SSHD_CONFIG = """Port 22
ListenAddress {address}
HostKey {folder}/host_key
PidFile {folder}/sshd.pid
AuthorizedKeysFile {folder}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
LogLevel ERROR
"""


def _wait_listening(address: str, port: int, proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd on {address} exited with {proc.returncode}")
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"sshd on {address} did not listen within {timeout_s:g} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def hosts_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostsNet]:
    reason = sshd_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("hosts")
    tag = "lh" + secrets.token_hex(3)
    octet = int(tag[2:], 16) % 250 + 2
    key = folder / "client_key"
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    made_run_sshd = not Path("/run/sshd").exists()  # (sshd's privilege separation folder)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    hosts: dict[str, Host] = {}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    links: list[str] = []
    here = f"10.79.{octet}.1"
    try:
        for n, role in enumerate(("edge", "cloud"), start=2):
            ns = f"{tag}-{role}"
            host = Host(role, ns, f"10.79.{octet}.{n}", folder / role)
            host.folder.mkdir()
            hosts[role] = host
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run("ip", "-n", ns, "addr", "add", f"{host.address}/32", "dev", "lo")
            veth = f"{tag}-{role[0]}"
            links.append(veth)
            _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "to-here", "netns", ns)
            if n == 2:
                _run("ip", "addr", "add", f"{here}/32", "dev", veth)
            _run("ip", "link", "set", veth, "up")
            _run("ip", "-n", ns, "link", "set", "to-here", "up")
            _run("ip", "route", "add", f"{host.address}/32", "dev", veth, "src", here)
            _run("ip", "-n", ns, "route", "add", f"{here}/32", "dev", "to-here", "src", host.address)
        edge, cloud = hosts["edge"], hosts["cloud"]
        _run("ip", "-n", edge.netns, "link", "add", "to-cloud", "type", "veth", "peer", "name", "to-edge",
             "netns", cloud.netns)  # fmt: skip
        for host, dev, peer in ((edge, "to-cloud", cloud), (cloud, "to-edge", edge)):
            _run("ip", "-n", host.netns, "link", "set", dev, "up")
            _run(
                "ip", "-n", host.netns, "route", "add", f"{peer.address}/32", "dev", dev, "src", host.address
            )
        for role, host in hosts.items():
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host.folder / "host_key"))
            shutil.copy(f"{key}.pub", host.folder / "authorized_keys")
            config = host.folder / "sshd_config"
            config.write_text(SSHD_CONFIG.format(address=host.address, folder=host.folder))
            shift = (
                ["unshare", "--time", "--fork", "--kill-child", f"--monotonic={CLOUD_CLOCK_SHIFT_S}"]
                if role == "cloud"
                else []
            )
            argv = ["ip", "netns", "exec", host.netns, *shift, str(SSHD), "-D", "-e", "-f", str(config)]
            log = open(host.folder / "sshd.log", "wb")  # noqa: SIM115 -- closed with the process
            procs[role] = subprocess.Popen(argv, stdout=log, stderr=log)
            log.close()
            _wait_listening(host.address, 22, procs[role])
        yield HostsNet(folder=folder, key=key, hosts=hosts, procs=procs)
    finally:
        for proc in procs.values():
            _stop(proc)
        for host in hosts.values():
            subprocess.run(["ip", "netns", "del", host.netns], check=False, capture_output=True)
        for link in links:  # (gone with their namespaces, unless one was left half-made)
            subprocess.run(["ip", "link", "del", link], check=False, capture_output=True)
        if made_run_sshd:
            shutil.rmtree("/run/sshd", ignore_errors=True)


def ssh_on(net: HostsNet, role: str, *argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` on a host over ssh, as root, with the test's key (a check from outside the harness)."""
    host = net.hosts[role]
    return subprocess.run(
        ["ssh", "-T", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR", "-i", str(net.key), f"root@{host.address}", *argv],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
