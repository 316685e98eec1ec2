"""The hosts file and the commands built from it (no ssh needed)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from harness.hosts import HostsError, load_hosts, ssh_argv
from harness.remote_node import shaping_argvs
from harness.remote_testbed import PROJECT_ROOT, map_path, remote_env
from netem.spec import LinkSpec

GOOD = """
known_hosts = "kh"

[test]
local = true

[edge]
host = "192.168.1.20"
user = "pi"
port = 2222
key = "keys/edge"
project = "/home/pi/localexit"

[cloud]
host = "cloud.example"
address = "10.0.0.9"
listen = "10.0.0.9"
project = "/srv/localexit"
python = "/srv/py/bin/python"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hosts.toml"
    path.write_text(text)
    return path


def test_a_hosts_file_names_each_node_and_how_to_reach_it(tmp_path: Path) -> None:
    hosts = load_hosts(write(tmp_path, GOOD))
    edge, cloud = hosts.node("edge"), hosts.node("cloud")
    assert hosts.node("test").local
    assert edge.key == tmp_path / "keys/edge"  # (relative to the hosts file)
    assert hosts.known_hosts == tmp_path / "kh"
    assert edge.interpreter == "/home/pi/localexit/.venv/bin/python"
    assert cloud.interpreter == "/srv/py/bin/python"
    assert (edge.reach, cloud.reach, edge.listen) == ("192.168.1.20", "10.0.0.9", "0.0.0.0")


def test_tls_files_of_a_local_node_are_relative_to_the_hosts_file(tmp_path: Path) -> None:
    tls = '\ntls_cert = "tls/c.pem"\ntls_key = "tls/c.key"\ntls_ca = "/etc/ca.pem"\n'
    text = GOOD.replace("local = true", "local = true" + tls).replace(
        'python = "/srv/py/bin/python"', 'python = "/srv/py/bin/python"' + tls
    )
    text = text.replace('project = "/home/pi/localexit"', 'project = "/home/pi/localexit"' + tls)
    hosts = load_hosts(write(tmp_path, text))
    assert hosts.node("test").tls_options == [
        "--tls-cert",
        str(tmp_path / "tls/c.pem"),
        "--tls-key",
        str(tmp_path / "tls/c.key"),
        "--tls-ca",
        "/etc/ca.pem",
    ]
    assert hosts.node("edge").tls_cert == "tls/c.pem"  # (a path on that host, as given)


def test_the_test_node_may_run_on_another_host(tmp_path: Path) -> None:
    hosts = load_hosts(
        write(tmp_path, GOOD.replace("local = true", 'host = "cloud.example"\nproject = "/srv/lx"'))
    )
    test = hosts.node("test")
    assert not test.local and test.destination == "cloud.example"
    assert [node.role for node in hosts.remote()] == ["test", "edge", "cloud"]


def test_ssh_runs_the_argv_quoted_without_a_terminal_or_a_password_prompt(tmp_path: Path) -> None:
    hosts = load_hosts(write(tmp_path, GOOD))
    argv = ssh_argv(hosts.node("edge"), ["python", "-m", "x", "a b", "$HOME"], known_hosts=hosts.known_hosts)
    assert argv[0] == "ssh" and "-T" in argv and "BatchMode=yes" in argv
    assert "StrictHostKeyChecking=accept-new" in argv and f"UserKnownHostsFile={tmp_path / 'kh'}" in argv
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-l") + 1] == "pi"
    assert argv[-3:-1] == ["--", "192.168.1.20"]
    assert shlex.split(argv[-1]) == ["python", "-m", "x", "a b", "$HOME"]  # (the remote shell sees the words)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (GOOD.replace("[cloud]", "[clod]"), "unknown key(s) clod"),
        (GOOD.replace('project = "/srv/localexit"\n', ""), "[cloud]: give project"),
        (GOOD.replace("port = 2222", 'port = "x"'), "port must be an integer"),
        (GOOD.replace("local = true", 'local = true\nhost = "h"'), "either local = true or host"),
        (GOOD + 'tls_cert = "/c.pem"\n', "tls_cert, tls_key and tls_ca together"),
        (GOOD.replace("[edge]", "[edge"), "not valid TOML"),
    ],
)
def test_a_bad_hosts_file_is_one_clear_error(tmp_path: Path, text: str, said: str) -> None:
    with pytest.raises(HostsError, match="hosts file") as info:
        load_hosts(write(tmp_path, text))
    assert said in str(info.value) and "\n" not in str(info.value)


def test_node_paths_of_this_checkout_become_the_hosts_project() -> None:
    checkpoint = str(PROJECT_ROOT / "models/zoo/fashion-mnist/mem.pt")
    assert map_path(checkpoint, "/srv/lx") == "/srv/lx/models/zoo/fashion-mnist/mem.pt"
    assert map_path("/data/cifar", "/srv/lx") == "/data/cifar"
    assert map_path(checkpoint, None) == checkpoint


def test_a_remote_node_gets_the_users_settings_not_this_machines_counts() -> None:
    mine = {"OMP_NUM_THREADS": "4", "PATH": "/usr/bin", "GOMP_SPINCOUNT": "1"}
    env = {**mine, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "LOCALEXIT_TOKEN": "t"}
    # (the thread counts the harness computed for this machine differ from the user's: left out)
    assert remote_env(env, {**mine, "LOCALEXIT_TOKEN": "t"}) == ["GOMP_SPINCOUNT=1"]


def test_only_the_traffic_to_the_peer_is_shaped() -> None:
    spec = LinkSpec.parse(rate="10mbit", delay="20ms")
    commands, applied = shaping_argvs("eth1", "10.0.0.9", spec, frozenset({"htb", "tbf", "netem"}))
    assert applied == {"rate": "htb", "delay": "netem"}
    words = [" ".join(c) for c in commands]
    assert any("match ip dst 10.0.0.9/32 flowid 1:1" in w for w in words)
    assert any("classid 1:1 htb rate 10000000bit ceil 10000000bit" in w for w in words)
    assert any("parent 1:1 handle 10: netem" in w for w in words)
    # without netem the delay is not applied (the caller reports it), the rate still is
    _commands, applied = shaping_argvs("eth1", "10.0.0.9", spec, frozenset({"htb"}))
    assert applied == {"rate": "htb"}


def test_the_default_state_folder_is_not_taken_for_a_dead_run_s_log_folder() -> None:
    from harness.hosts import DEFAULT_STATE_DIR
    from netem.cleanup import LOG_DIR_PREFIX

    # (`harness clean` on a machine that is also a host would otherwise report or remove it)
    assert not Path(DEFAULT_STATE_DIR).name.startswith(LOG_DIR_PREFIX)
