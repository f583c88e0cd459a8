"""x509 with `cryptography`: reading PEM chains and keys, what a certificate says, new keys and CSRs."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ..clock import iso
from ..errors import FaztAgentError


class CertError(FaztAgentError):
    """A certificate or key cannot be read; the message says which file and why."""


@dataclass(frozen=True)
class CertInfo:
    """What a leaf certificate says, in plain values."""

    subject: str
    issuer: str
    names: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    serial: str
    fingerprint: str        # sha256 of the DER, hex

    def to_json(self) -> dict[str, Any]:
        return {"subject": self.subject, "issuer": self.issuer, "names": list(self.names),
                "not_before": iso(self.not_before), "not_after": iso(self.not_after), "serial": self.serial,
                "fingerprint": self.fingerprint}


def load_chain(pem: bytes, source: str) -> list[x509.Certificate]:
    """Every certificate of a PEM file, leaf first.

    Raises:
        CertError: no PEM certificate in it, or one that does not parse.
    """
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise CertError(f"{source} holds no PEM certificate (no '-----BEGIN CERTIFICATE-----' line)")
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise CertError(f"{source} holds a malformed certificate: {e}") from None


def load_key(pem: bytes, source: str) -> Any:
    """A private key from PEM (unencrypted).

    Raises:
        CertError: it is not an unencrypted PEM private key.
    """
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise CertError(f"{source} holds no usable private key: {e}") from None


def key_matches(cert: x509.Certificate, key: Any) -> bool:
    """Whether `key` is the private half of the certificate's public key."""
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return (cert.public_key().public_bytes(serialization.Encoding.DER, spki)
            == key.public_key().public_bytes(serialization.Encoding.DER, spki))


def names(cert: x509.Certificate) -> tuple[str, ...]:
    """The DNS names and IP addresses the certificate is for (subjectAltName; else its CN)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
    return (*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress)))


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def info(cert: x509.Certificate) -> CertInfo:
    return CertInfo(subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(), names=names(cert),
                    not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
                    serial=format(cert.serial_number, "x"), fingerprint=fingerprint(cert))


def covers(cert_names: tuple[str, ...], name: str) -> bool:
    """Whether a certificate for `cert_names` is valid for host `name` (one-label wildcards)."""
    name = name.lower().rstrip(".")
    for pattern in (n.lower() for n in cert_names):
        if pattern == name:
            return True
        if pattern.startswith("*.") and "." in name and name.split(".", 1)[1] == pattern[2:]:
            return True
    return False


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def new_key(key_type: str) -> Any:
    """A fresh private key: ec-p256, ec-p384, rsa-2048 or rsa-4096."""
    kind, size = key_type.split("-")
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1() if size == "p256" else ec.SECP384R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=int(size))


def key_pem(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def csr_pem(key: Any, domains: tuple[str, ...]) -> bytes:
    """A CSR for `domains` (all as subjectAltNames, the first also as CN)."""
    builder = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domains[0])]))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in domains]), critical=False))
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
