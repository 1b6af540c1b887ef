"""A self-signed serving certificate per site, kept in the site's state directory.

client-go (kubectl) only sends bearer tokens over TLS, so a site serves HTTPS. The
certificate names 127.0.0.1 and localhost and is its own CA; the lab's kubeconfig names its
file (``certificate-authority``). It is created once and reused across restarts.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from pathlib import Path

TLS_DIR = "tls"
CERT_NAME = "server.crt"
KEY_NAME = "server.key"


def cert_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / TLS_DIR / CERT_NAME


def read_ca(state_dir: str | os.PathLike[str]) -> str:
    """The PEM certificate clients of the site in ``state_dir`` must trust."""
    return cert_path(state_dir).read_text(encoding="ascii")


def ensure_certificate(state_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Create the site's key and certificate unless present; returns their paths."""
    folder = Path(state_dir) / TLS_DIR
    cert, key = folder / CERT_NAME, folder / KEY_NAME
    if cert.exists() and key.exists():
        return cert, key
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dr-kit-lab-apiserver")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=False,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(private.public_key()), critical=False
        )
        .sign(private, hashes.SHA256())
    )
    key_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _atomic_write(key, key_pem, 0o600)
    _atomic_write(cert, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert, key


def server_context(state_dir: str | os.PathLike[str]) -> ssl.SSLContext:
    cert, key = ensure_certificate(state_dir)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
