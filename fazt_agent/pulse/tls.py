"""`tls`: what `host:port` serves for an SNI name — the chain, its validity against a CA bundle,
days left and whether it covers the name.

The expiry thresholds and renewal window are the `cert_file` ones. A chain that does not
validate (untrusted, wrong name, expired) is critical; a connection that cannot be made is
`unknown`, since renewing a certificate would not fix it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from ..errors import CheckError
from ..units import Duration
from .base import Check, CheckContext, CheckResult, check, worst
from .cert_file import ExpiryConfig, expiry_result


class TlsConfig(ExpiryConfig):
    kind: Literal["tls"]
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(443, ge=1, le=65535)
    sni: str | None = None                  # default: `host` (none when host is an IP address)
    ca_bundle: Path | None = None           # PEM roots to validate against; default: the system's
    connect_timeout: Duration = Field(8.0, validate_default=True)

    @field_validator("connect_timeout")
    @classmethod
    def _within_timeout(cls, value: float, info: ValidationInfo) -> float:
        timeout = info.data.get("timeout")
        if timeout is not None and value >= timeout:
            raise ValueError(f"connect_timeout {value:g}s (default 8s) must be shorter than the check timeout "
                             f"{timeout:g}s")
        return value

    @property
    def server_name(self) -> str | None:
        """The SNI name to send: `sni`, else `host` unless it is an IP address."""
        from ..certs.x509 import is_ip

        return self.sni or (None if is_ip(self.host) else self.host)


@check("tls")
class TlsCheck(Check):
    Config = TlsConfig
    config: TlsConfig

    @property
    def target(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    async def collect(self, ctx: CheckContext) -> list[CheckResult]:
        from ..certs.probe import chain_problem, served_chain, trust_store  # lazy: cryptography
        from ..certs.x509 import covers

        c = self.config
        target = f"{c.host}:{c.port}"
        name = c.server_name or c.host
        chain = await served_chain(c.host, c.port, c.server_name, c.connect_timeout)
        if not chain:
            raise CheckError(f"{target} sent no certificate")
        roots = trust_store(c.ca_bundle)
        expiry, details = expiry_result(c, chain[0], ctx)
        problem = chain_problem(chain, roots, name, ctx.clock.now())
        details.update(sni=c.server_name, chain=[cert.subject.rfc4514_string() for cert in chain],
                       valid=problem is None, hostname_matches=covers(tuple(details["names"]), name))
        message = f"{details['subject']}: {expiry.message}"
        if problem:
            details["problem"] = problem
            message += f"; not valid for {name}: {problem}"
        status = worst([expiry.status, "critical" if problem else "ok"])
        return [self.result(target, status, message, {"days_left": expiry.days_left}, **details)]
