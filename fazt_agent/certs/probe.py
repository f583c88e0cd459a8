"""What a TLS endpoint serves, and whether that chain is valid for a name against a CA bundle.

`served_chain` connects without verifying (an expired or untrusted certificate must still be
seen and reported); `chain_problem` then validates the served chain with `cryptography`'s
web-PKI verifier, at the caller's `now` (pure, so a fake clock works).
"""

from __future__ import annotations

import _ssl
import asyncio
import os
import ssl
from datetime import datetime
from functools import lru_cache
from ipaddress import ip_address
from pathlib import Path

from cryptography import x509
from cryptography.x509.verification import DNSName, IPAddress, PolicyBuilder, Store, VerificationError

from ..errors import CheckError
from .x509 import is_ip


async def served_chain(host: str, port: int, sni: str | None, timeout: float) -> list[x509.Certificate]:
    """The certificates `host:port` sends when asked for `sni`, leaf first.

    Raises:
        CheckError: no TLS connection could be made.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        transport, _ = await asyncio.wait_for(asyncio.get_running_loop().create_connection(
            asyncio.Protocol, host, port, ssl=context, server_hostname=sni or None,
            ssl_handshake_timeout=timeout), timeout)
    except (OSError, asyncio.TimeoutError, ssl.SSLError) as e:
        raise CheckError(f"cannot open a TLS connection to {host}:{port}: {_reason(e, timeout)}") from None
    try:
        tls = transport.get_extra_info("ssl_object")
        # public as SSLObject.get_unverified_chain() (DER bytes) from Python 3.13; before, the same
        # call exists one level down and returns certificate objects
        chain = tls.get_unverified_chain() if hasattr(tls, "get_unverified_chain") else \
            tls._sslobj.get_unverified_chain()
        return [x509.load_der_x509_certificate(c if isinstance(c, bytes) else c.public_bytes(_ssl.ENCODING_DER))
                for c in chain or ()]
    finally:
        transport.close()


def _reason(e: BaseException, timeout: float) -> str:
    if isinstance(e, asyncio.TimeoutError):
        return f"no handshake within {timeout:g}s"
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


@lru_cache(maxsize=8)
def _roots(path: str, mtime_ns: int) -> tuple[x509.Certificate, ...]:
    return tuple(x509.load_pem_x509_certificates(Path(path).read_bytes()))


def trust_store(bundle: Path | None) -> tuple[x509.Certificate, ...]:
    """The roots of `bundle` (PEM), or of the system's default CA file.

    Raises:
        CheckError: the bundle cannot be read or holds no certificate.
    """
    path = str(bundle) if bundle else (ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    try:
        return _roots(path, os.stat(path).st_mtime_ns)
    except (OSError, ValueError) as e:
        raise CheckError(f"cannot read the CA bundle {path}: {getattr(e, 'strerror', None) or e}") from None


def chain_problem(chain: list[x509.Certificate], roots: tuple[x509.Certificate, ...], name: str,
                  now: datetime) -> str | None:
    """Why `chain` is not valid for `name` at `now` under `roots`, or None when it is."""
    subject = IPAddress(ip_address(name)) if is_ip(name) else DNSName(name)
    verifier = PolicyBuilder().store(Store(list(roots))).time(now).build_server_verifier(subject)
    try:
        verifier.verify(chain[0], chain[1:])
    except VerificationError as e:
        return str(e).split(" (encountered processing", 1)[0]
    return None
