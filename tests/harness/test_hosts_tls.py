"""TLS between the nodes (``nodes.transport.TlsFiles``): mutual, against the deployment's own CA."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nodes import ClockProbe, ClockReply, FramedStream, Listener, PeerError, UsageError, open_stream
from nodes.cli import tls_from
from nodes.transport import TlsFiles

from .hosts_pki import make_ca, make_node_tls


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TlsFiles]:
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca(folder)
    stranger_ca = make_ca(folder, "stranger-ca")
    return {
        "cloud": make_node_tls(folder, "cloud", ca),
        "test": make_node_tls(folder, "test", ca),
        "stranger": make_node_tls(folder, "stranger", stranger_ca),
    }


@contextlib.asynccontextmanager
async def _tls_echo(tls: TlsFiles) -> AsyncIterator[int]:
    """A listener that answers each ClockProbe with a ClockReply, over TLS; yields its port."""

    async def handler(stream: FramedStream) -> None:
        stream.conn.handshake_done()
        while True:
            msg = await stream.recv()
            assert isinstance(msg, ClockProbe)
            await stream.send(ClockReply(seq=msg.seq, t_sent_ns=msg.t_sent_ns, t_recv_ns=1, t_reply_ns=2))

    listener = Listener(handler, node="test", timeout=5.0, tls=tls.server_context())
    _, port = await listener.start("127.0.0.1", 0)
    try:
        yield port
    finally:
        await listener.close()


async def test_messages_cross_a_mutual_tls_connection(pki: dict[str, TlsFiles]) -> None:
    async with _tls_echo(pki["cloud"]) as port:
        client = await open_stream(
            "127.0.0.1", port, node="cloud", timeout=5.0, tls=pki["test"].client_context()
        )
        try:
            client.conn.handshake_done()
            for seq in range(3):
                await client.send(ClockProbe(seq=seq, t_sent_ns=10 + seq))
                reply = await client.recv()
                assert isinstance(reply, ClockReply)
                assert (reply.seq, reply.t_sent_ns) == (seq, 10 + seq)
        finally:
            await client.close()


async def test_a_certificate_of_another_ca_is_refused(pki: dict[str, TlsFiles]) -> None:
    async with _tls_echo(pki["cloud"]) as port:
        with pytest.raises(PeerError, match="cloud node"):
            client = await open_stream(
                "127.0.0.1", port, node="cloud", timeout=5.0, tls=pki["stranger"].client_context()
            )
            # (TLS 1.3 may finish the client's side before the server has refused its certificate)
            client.conn.handshake_done()
            try:
                await client.send(ClockProbe(seq=0, t_sent_ns=0))
                await client.recv(timeout=5.0)
            finally:
                await client.close()


async def test_a_plain_tcp_client_gets_nothing_from_a_tls_listener(pki: dict[str, TlsFiles]) -> None:
    async with _tls_echo(pki["cloud"]) as port:
        client = await open_stream("127.0.0.1", port, node="cloud", timeout=5.0)
        client.conn.handshake_done()
        try:
            await client.send(ClockProbe(seq=0, t_sent_ns=0))
            with pytest.raises(PeerError):
                await client.recv(timeout=5.0)
        finally:
            await client.close()


def test_the_node_options_need_all_three_files(tmp_path: Path, pki: dict[str, TlsFiles]) -> None:
    files = pki["test"]
    full = argparse.Namespace(tls_cert=files.cert, tls_key=files.key, tls_ca=files.ca)
    assert tls_from(full) == files
    assert tls_from(argparse.Namespace(tls_cert=None, tls_key=None, tls_ca=None)) is None
    with pytest.raises(UsageError, match="--tls-key"):
        tls_from(argparse.Namespace(tls_cert=files.cert, tls_key=None, tls_ca=files.ca))
    with pytest.raises(UsageError, match="does not exist"):
        TlsFiles(cert=tmp_path / "absent.pem", key=files.key, ca=files.ca)
