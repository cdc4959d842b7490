"""Test certificates, made at test time with `cryptography`: a CA, and leaf certificates it signs
for 127.0.0.1 / localhost, usable as server and client certificates (mutual TLS)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rpc.cluster_auth import INTERNAL_IDENTITY


@dataclass(frozen=True, slots=True)
class CertFiles:
    cert: str
    key: str
    ca: str


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(
        now + datetime.timedelta(days=1)
    )


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def make_ca(
    directory: Path, name: str = "baton-test-ca"
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    cert = _validity(builder).sign(key, hashes.SHA256())
    path = directory / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key, path


def make_leaf(
    directory: Path, name: str, ca_cert: x509.Certificate, ca_key, ca_path: Path, uris: tuple[str, ...] = ()
) -> CertFiles:
    """A certificate for 127.0.0.1 and localhost, good for serving and for client auth; `uris` are
    extra URI SANs (the cluster's internal identity, `spiffe://baton/internal`)."""
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names = x509.SubjectAlternativeName(
        [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            *(x509.UniformResourceIdentifier(uri) for uri in uris),
        ]
    )
    usage = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(alt_names, critical=False)
        .add_extension(usage, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    cert = _validity(builder).sign(ca_key, hashes.SHA256())
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)
    return CertFiles(str(cert_path), str(key_path), str(ca_path))


def make_pki(directory: Path) -> dict[str, CertFiles]:
    """`service` (router + workers, with the internal identity), `client` (a tenant's certificate
    from the same CA) and `stranger` (signed by another CA)."""
    ca_cert, ca_key, ca_path = make_ca(directory)
    other_cert, other_key, other_path = make_ca(directory, "other-ca")
    return {
        "service": make_leaf(directory, "service", ca_cert, ca_key, ca_path, uris=(INTERNAL_IDENTITY,)),
        "client": make_leaf(directory, "client", ca_cert, ca_key, ca_path),
        "stranger": make_leaf(directory, "stranger", other_cert, other_key, other_path),
    }
