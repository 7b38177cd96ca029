"""A throwaway CA and a server certificate for 127.0.0.1, for the TLS dev servers.

Made with the ``openssl`` CLI (present on every machine the servers run on), so
no Python crypto package is needed at run time. Files are PEM; the server key is
unencrypted PKCS#8, which both nats-server and Kafka's PEM key stores read.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

CERT_FILES = ("ca", "ca-key", "server", "server-key")


def make_certs(folder: Path) -> dict[str, Path]:
    """Write ``ca.pem``, ``ca-key.pem``, ``server.pem`` and ``server-key.pem`` into ``folder``.

    The server certificate names ``IP:127.0.0.1`` and ``DNS:localhost``, so clients
    that verify the host name accept it with the CA as their only trust root."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: folder / f"{name}.pem" for name in CERT_FILES}
    ext = folder / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    csr = folder / "server.csr"

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", str(files["ca-key"]), "-out", str(files["ca"]))  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", str(files["server-key"]), "-out", str(csr))  # fmt: skip
    run("x509", "-req", "-in", str(csr), "-CA", str(files["ca"]), "-CAkey", str(files["ca-key"]),
        "-CAcreateserial", "-days", "1", "-extfile", str(ext), "-out", str(files["server"]))  # fmt: skip
    return files
