"""`cert_file`: a PEM certificate on disk — days left, issuer, names, and whether its key matches.

Warning when the certificate enters its renewal window (certbot's rule unless `renew_before`
is set) or has `warning` days or fewer left; critical at `critical` days, when expired, when
the key does not match, or when the file is missing. A file that is not a certificate is
`unknown`. `certificate` names the `[[certificates]]` entry (kernel/) that `ssl.renew` renews.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from ..certs import window
from ..certs.config import CERT_NAME, NO_CERT
from ..units import Duration
from .base import Check, CheckConfig, CheckContext, CheckResult, Status, check



class ExpiryConfig(CheckConfig):
    """Keys shared by the certificate checks (`cert_file`, `tls`); thresholds in days left."""

    certificate: str | None = Field(None, pattern=CERT_NAME)
    critical: float | None = Field(7.0, ge=0)
    warning: float | None = Field(14.0, ge=0)
    renew_before: Duration | None = None   # a fixed margin before expiry; default: certbot's rule

    @field_validator("warning")
    @classmethod
    def _warn_first(cls, value: float | None, info: ValidationInfo) -> float | None:
        limit = info.data.get("critical")
        if value is not None and limit is not None and value < limit:
            raise ValueError(f"warning {value:g} days is fewer than critical {limit:g} days; "
                             "the warning must come first (more days left)")
        return value


def expiry_result(c: ExpiryConfig, leaf: Any, ctx: CheckContext) -> tuple[window.Expiry, dict[str, Any]]:
    """The expiry judgement of `leaf` and the details every certificate check reports."""
    from ..certs.x509 import info  # lazy: cryptography costs ~9 MB the idle daemon does not need

    seen = info(leaf)
    expiry = window.judge_expiry(seen.not_before, seen.not_after, ctx.clock.now(), warning=c.warning,
                                 critical=c.critical, renew_before=c.renew_before)
    details = {**seen.to_json(), "renew_at": expiry.renew_at.isoformat(), "in_renewal_window": expiry.in_window}
    if c.certificate:
        details["certificate"] = c.certificate
    return expiry, details


class CertFileConfig(ExpiryConfig):
    kind: Literal["cert_file"]
    path: Path                  # PEM: the certificate, or the full chain (leaf first)
    key: Path | None = None     # its private key (PEM), to check that they match


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


@check("cert_file")
class CertFileCheck(Check):
    Config = CertFileConfig
    config: CertFileConfig

    @property
    def target(self) -> str:
        return str(self.config.path)

    async def collect(self, ctx: CheckContext) -> list[CheckResult]:
        from ..certs.x509 import CertError, key_matches, load_chain, load_key

        c = self.config
        target = str(c.path)
        named: dict[str, Any] = {"certificate": c.certificate} if c.certificate else {}
        try:
            pem = await asyncio.to_thread(_read, c.path)
            if pem is None:
                return [self.result(target, "critical", f"{target} does not exist", fingerprint=NO_CERT, **named)]
            chain = load_chain(pem, target)
            key_pem = await asyncio.to_thread(c.key.read_bytes) if c.key else None
            key = load_key(key_pem, str(c.key)) if key_pem is not None else None
        except CertError as e:
            return [self.result(target, "unknown", str(e), **named)]
        except OSError as e:
            return [self.result(target, "unknown", f"cannot read {e.filename}: {e.strerror}", **named)]
        expiry, details = expiry_result(c, chain[0], ctx)
        details["chain_length"] = len(chain)
        status: Status = expiry.status
        message = f"{details['subject']}: {expiry.message}"
        if key is not None:
            details["key_matches"] = key_matches(chain[0], key)
            if not details["key_matches"]:
                status, message = "critical", f"the key {c.key} does not match the certificate; {message}"
        return [self.result(target, status, message, {"days_left": expiry.days_left}, **details)]
