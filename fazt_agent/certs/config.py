"""Certificate settings from kernel/*.toml: `[certs]` defaults and one `[[certificates]]` table each.

A certificate inherits every ACME key it does not set (directory, CA bundle, email, challenge,
listen address, webroot, DNS hook, reload hook, key type) from `[certs]`. `resolve` turns both
into a `Certificate` with every value decided, and refuses an incomplete one (webroot mode
without a webroot, DNS-01 without a hook, a wildcard without DNS-01).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..units import Duration

NO_CERT = "none"  # the fingerprint reported when no certificate could be read

Challenge = Literal["http-01-standalone", "http-01-webroot", "dns-01"]
KeyType = Literal["ec-p256", "ec-p384", "rsa-2048", "rsa-4096"]
LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
CERT_NAME = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
DOMAIN = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
HOOK_PLACEHOLDERS = ("{action}", "{domain}", "{name}", "{value}")


def check_domain(value: str) -> str:
    """`value` if it is a lowercase DNS name (or `*.name`); else ValueError naming it."""
    if len(value) > 253 or not DOMAIN.match(value):
        raise ValueError(f"{value!r} is not a domain name (lowercase, like 'example.com' or '*.example.com')")
    return value


def _argv(value: Any) -> Any:
    if isinstance(value, str):
        raise ValueError(f"expected an argv list like ['/usr/bin/program', 'arg'], not a shell string: {value!r}")
    if isinstance(value, list) and not value:
        raise ValueError("an argv list needs at least the program")
    return value


def _address(value: str | None) -> str | None:
    if value is not None:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected HOST:PORT such as '0.0.0.0:80' or '127.0.0.1:8443', got {value!r}")
    return value


def _absolute_path(value: Path | None) -> Path | None:
    if value is not None and (not value.is_absolute() or ".." in value.parts):
        raise ValueError(f"expected an absolute path without '..', got {str(value)!r}")
    return value


class _Model(BaseModel):
    # defer_build: built when kernel/*.toml is first validated, not at import
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class AcmeKeys(_Model):
    """Keys set in `[certs]` for every certificate, or in one `[[certificates]]` table for it."""

    directory: str | None = None           # the ACME directory URL (default: Let's Encrypt)
    acme_ca_bundle: Path | None = None     # PEM roots to trust for the ACME server (default: the system's)
    email: str | None = None               # the account's contact
    challenge: Challenge | None = None     # default: http-01-standalone
    listen: str | None = None              # standalone: the address to answer HTTP-01 on (default 0.0.0.0:80)
    webroot: Path | None = None            # webroot: the folder served at http://DOMAIN/
    dns_hook: list[str] | None = None      # dns-01: argv; {action} is present|cleanup, {domain}, {name}, {value}
    reload: list[str] | None = None        # argv run after installing, e.g. ["systemctl", "reload", "nginx"]
    key_type: KeyType | None = None        # default: ec-p256

    _no_shell = field_validator("dns_hook", "reload", mode="before")(_argv)
    _listen = field_validator("listen")(_address)
    _paths = field_validator("acme_ca_bundle", "webroot")(_absolute_path)

    @field_validator("directory")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError(f"expected the ACME directory URL (https://...), got {value!r}")
        return value

    @field_validator("dns_hook")
    @classmethod
    def _hook_fixed_program(cls, value: list[str] | None) -> list[str] | None:
        if value and any(p in value[0] for p in HOOK_PLACEHOLDERS):
            raise ValueError("the program (first element) of dns_hook cannot contain a placeholder")
        return value


class CertsSettings(AcmeKeys):
    """`[certs]`: defaults for every certificate, and how long each step may take."""

    store: Path | None = None              # where ssl.provision writes (default: DATA_DIR/certs)
    timeout: Duration = Field(300.0, gt=0, le=600)       # one issuance, from the order to the chain
    hook_timeout: Duration = Field(120.0, gt=0, le=300)  # each run of dns_hook or reload
    verify_timeout: Duration = Field(15.0, gt=0, le=120)  # for the endpoint to serve the new certificate
    retry_budget: Duration = Field(120.0, ge=0, le=600)  # the most time spent waiting to retry ACME errors

    _store = field_validator("store")(_absolute_path)


class CertificateSpec(AcmeKeys):
    """`[[certificates]]`: one certificate the agent renews."""

    name: str = Field(pattern=CERT_NAME)
    domains: list[str] = Field(min_length=1, max_length=100)
    cert_path: Path                        # the full chain (PEM), written atomically
    key_path: Path                         # the private key (PEM), written with mode 0600
    verify_tls: str | None = None          # HOST:PORT that must serve the new certificate afterwards
    verify_sni: str | None = None          # the SNI name to ask for there (default: the first domain)

    _verify = field_validator("verify_tls")(_address)

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        for domain in value:
            check_domain(domain)
        if len(set(value)) != len(value):
            raise ValueError("a domain is listed twice")
        return value

    _paths = field_validator("cert_path", "key_path")(_absolute_path)


@dataclass(frozen=True)
class Certificate:
    """One certificate with every setting decided (own keys, else `[certs]`, else the default)."""

    name: str
    domains: tuple[str, ...]
    cert_path: Path
    key_path: Path
    directory: str
    ca_bundle: Path | None
    email: str | None
    challenge: Challenge
    listen: str
    webroot: Path | None
    dns_hook: tuple[str, ...] | None
    reload: tuple[str, ...] | None
    key_type: KeyType
    verify_tls: str | None = None
    verify_sni: str | None = None

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))


def resolve(spec: CertificateSpec, section: CertsSettings) -> Certificate:
    """`spec` completed from `section`.

    Raises:
        ValueError: the certificate cannot be issued as configured (the message says what to set).
    """

    def pick(key: str, default: Any = None) -> Any:
        own = getattr(spec, key)
        return own if own is not None else getattr(section, key) if getattr(section, key) is not None else default

    cert = Certificate(
        name=spec.name, domains=tuple(spec.domains), cert_path=spec.cert_path, key_path=spec.key_path,
        directory=pick("directory", LETS_ENCRYPT), ca_bundle=pick("acme_ca_bundle"), email=pick("email"),
        challenge=pick("challenge", "http-01-standalone"), listen=pick("listen", "0.0.0.0:80"),
        webroot=pick("webroot"), dns_hook=_tuple(pick("dns_hook")), reload=_tuple(pick("reload")),
        key_type=pick("key_type", "ec-p256"), verify_tls=spec.verify_tls, verify_sni=spec.verify_sni)
    if cert.cert_path == cert.key_path:
        raise ValueError("cert_path and key_path must be different files")
    if cert.challenge == "http-01-webroot" and cert.webroot is None:
        raise ValueError("challenge 'http-01-webroot' needs webroot = '/path/served/at/http/root'")
    if cert.challenge == "dns-01" and cert.dns_hook is None:
        raise ValueError("challenge 'dns-01' needs dns_hook = ['/path/to/hook', '{action}', '{name}', '{value}']")
    if cert.challenge != "dns-01" and any(d.startswith("*.") for d in cert.domains):
        raise ValueError("a wildcard domain can only be validated with challenge = 'dns-01'")
    return cert


def _tuple(value: list[str] | None) -> tuple[str, ...] | None:
    return tuple(value) if value is not None else None


def provisioned_spec(store: Path, name: str, domains: list[str]) -> CertificateSpec:
    """The spec of a certificate `ssl.provision` keeps in `store/NAME/`."""
    return CertificateSpec(name=name, domains=domains, cert_path=store / name / "fullchain.pem",
                           key_path=store / name / "privkey.pem")


def load_provisioned(store: Path, name: str) -> CertificateSpec | None:
    """The spec `ssl.provision` recorded in `store/NAME/domains.json`, or None."""
    try:
        domains = json.loads((store / name / "domains.json").read_text())
    except (OSError, ValueError):
        return None
    return provisioned_spec(store, name, domains)
