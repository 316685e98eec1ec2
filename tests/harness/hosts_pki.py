"""A private CA and node certificates made with the ``openssl`` command, for the TLS tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from nodes.transport import TlsFiles

KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
#: What a node's certificate says: an end entity for both ends of a connection (mutual TLS).
NODE_EXTENSIONS = """basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
subjectAltName=IP:127.0.0.1
"""


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(folder: Path, name: str = "ca") -> tuple[Path, Path]:
    """A self-signed CA in ``folder``: (its certificate, its key)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make certificates (apt-get install openssl)")
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    _openssl(
        "req", "-x509", *KEY, "-keyout", str(key), "-out", str(cert), "-days", "2",
        "-subj", f"/CN=localexit test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


def make_node_tls(folder: Path, name: str, ca: tuple[Path, Path]) -> TlsFiles:
    """A certificate and key for node ``name`` signed by ``ca``, as the node's ``TlsFiles``."""
    cert, key, csr, ext = (folder / f"{name}{suffix}" for suffix in (".pem", ".key", ".csr", ".ext"))
    ext.write_text(NODE_EXTENSIONS)
    _openssl("req", *KEY, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
        "-out", str(cert), "-days", "2", "-extfile", str(ext),
    )  # fmt: skip
    return TlsFiles(cert=cert, key=key, ca=ca[0])
