"""`ssl.renew` and `ssl.provision`: get a certificate from ACME, install it, prove it is served.

`ssl.renew NAME` renews a certificate declared as `[[certificates]]` in kernel/*.toml (or one
`ssl.provision` made). With `seen_fingerprint` (what the check saw) it does nothing when the
file already holds another certificate: a renewal by another check's incident got there first.
`ssl.provision NAME DOMAINS` issues a new certificate into `[certs] store`/NAME/, only for
domains matching the policy's `[constraints] domains` globs.

Both are safe and reversible: the previous files are kept and restored on any failure (see
certs/renew.py for the closed loop).
"""

from __future__ import annotations

import asyncio
import json
import shlex
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from ..certs.config import (CERT_NAME, NO_CERT, Certificate, CertsSettings, check_domain, load_provisioned, provisioned_spec,
                            resolve)
from ..errors import ActionError
from .base import Action, ActionArgs, ActionContext, Outcome, Plan, action


class RenewArgs(ActionArgs):
    name: str = Field(pattern=CERT_NAME)
    seen_fingerprint: str | None = Field(None, pattern=rf"^([0-9a-f]{{64}}|{NO_CERT})$")


class ProvisionArgs(ActionArgs):
    name: str = Field(pattern=CERT_NAME)
    domains: list[str] = Field(min_length=1, max_length=100)

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        return [check_domain(d) for d in value]


def _section(ctx: ActionContext) -> CertsSettings:
    return ctx.settings.get("certs") or CertsSettings()


def _store(ctx: ActionContext) -> Path:
    section = _section(ctx)
    if section.store is not None:
        return section.store
    if ctx.data_dir is None:
        raise ActionError("no [certs] store is set and there is no data dir to keep certificates in")
    return ctx.data_dir / "certs"


def _data_dir(ctx: ActionContext) -> Path:
    if ctx.data_dir is None:
        raise ActionError("certificate actions need the agent's data dir (for the ACME account)")
    return ctx.data_dir


def find(name: str, ctx: ActionContext) -> Certificate:
    """The certificate called `name`: declared in kernel/*.toml, else one ssl.provision made.

    Raises:
        ActionError(permanent=True): no such certificate, or its record is broken.
    """
    declared: dict[str, Certificate] = ctx.settings.get("certificates", {})
    if name in declared:
        return declared[name]
    try:
        spec = load_provisioned(_store(ctx), name)
        if spec is not None:
            return resolve(spec, _section(ctx))
    except ValueError as e:
        raise ActionError(f"the provisioned certificate {name!r} cannot be renewed: {e}") from None
    known = ", ".join(sorted(declared)) or "none declared"
    raise ActionError(f"no certificate named {name!r} ({known}); declare it as [[certificates]] in kernel/*.toml")


def check_domains(domains: list[str], allowed: tuple[str, ...]) -> None:
    """Refuse any domain no `allowed` glob matches.

    Raises:
        ActionError(permanent=True): naming the domains refused and the globs allowed.
    """
    if not allowed:
        raise ActionError("no domains are allowed; add them to [constraints] domains in a policy file")
    refused = [d for d in domains if not any(fnmatchcase(d, glob) for glob in allowed)]
    if refused:
        raise ActionError(f"domains {', '.join(refused)} are not allowed (allowed: {', '.join(allowed)})")


def _steps(cert: Certificate, state: dict[str, Any]) -> list[str]:
    how = {"http-01-standalone": f"answer HTTP-01 on {cert.listen}",
           "http-01-webroot": f"write the HTTP-01 token under {cert.webroot}/.well-known/acme-challenge/",
           "dns-01": f"publish the DNS-01 TXT record with {shlex.join(cert.dns_hook or ())}"}[cert.challenge]
    steps = [f"order a certificate for {', '.join(cert.domains)} from {cert.directory}; {how}"]
    if state["fingerprint"] != NO_CERT:
        steps.append(f"keep the current files as {cert.cert_path}.previous and {cert.key_path}.previous")
    steps.append(f"write the new chain to {cert.cert_path} and a new key to {cert.key_path} (mode 0600)")
    if cert.reload:
        steps.append(f"run {shlex.join(cert.reload)}")
    served = f" and that {cert.verify_tls} serves it" if cert.verify_tls else ""
    steps.append(f"verify that the files hold the new certificate and key{served}; otherwise restore the previous "
                 "files" + (" and reload again" if cert.reload else ""))
    return steps


class _CertAction(Action):
    timeout = 1800.0  # a ceiling; [certs] timeout, hook_timeout and verify_timeout bound each step

    def _plan(self, args: ActionArgs, cert: Certificate, state: dict[str, Any], summary: str) -> Plan:
        return Plan(action=self.name, args=args.model_dump(exclude_none=True), summary=summary,
                    steps=_steps(cert, state), risk="safe", reversible=True,
                    details={"certificate": cert.to_json(), "current": state})

    def material_change(self, approved: Plan, fresh: Plan) -> str | None:
        if fresh.details["current"]["fingerprint"] != approved.details["current"]["fingerprint"]:
            return f"{fresh.details['certificate']['cert_path']} holds another certificate since the approval"
        return super().material_change(approved, fresh)

    async def _apply(self, plan: Plan, cert: Certificate, ctx: ActionContext) -> Outcome:
        if cert.to_json() != plan.details["certificate"]:
            raise ActionError(f"the settings of certificate {cert.name!r} changed since this plan was made; plan again")
        from ..certs.renew import renew  # lazy: cryptography and acme load only when a renewal runs

        return await renew(cert, _section(ctx), _data_dir(ctx), plan.details["current"]["fingerprint"])


@action("ssl.renew")
class SslRenew(_CertAction):
    description = "Renew a configured certificate through ACME, install it, reload and verify it is served."
    Args = RenewArgs

    def validate(self, args: dict[str, Any], ctx: ActionContext) -> RenewArgs:
        parsed = RenewArgs.model_validate(args)
        find(parsed.name, ctx)
        return parsed

    async def plan(self, args: RenewArgs, ctx: ActionContext) -> Plan:  # type: ignore[override]
        cert = find(args.name, ctx)
        from ..certs.renew import current_state

        state = await asyncio.to_thread(current_state, cert)
        if args.seen_fingerprint is not None and state["fingerprint"] != args.seen_fingerprint:
            return Plan(action=self.name, args=args.model_dump(exclude_none=True), noop=True,
                        summary=f"{cert.cert_path} already holds another certificate than the one seen "
                                f"(valid until {state.get('not_after', '?')[:10]}); nothing to renew",
                        details={"certificate": cert.to_json(), "current": state})
        return self._plan(args, cert, state, f"renew certificate {cert.name} ({', '.join(cert.domains)})")

    async def apply(self, plan: Plan, ctx: ActionContext) -> Outcome:
        return await self._apply(plan, find(plan.args["name"], ctx), ctx)


@action("ssl.provision")
class SslProvision(_CertAction):
    description = "Issue a new certificate for domains the policy allows, into the [certs] store."
    Args = ProvisionArgs

    def validate(self, args: dict[str, Any], ctx: ActionContext) -> ProvisionArgs:
        parsed = ProvisionArgs.model_validate(args)
        check_domains(parsed.domains, ctx.constraints.domains)
        if parsed.name in ctx.settings.get("certificates", {}):
            raise ActionError(f"certificate {parsed.name!r} is declared in kernel/*.toml; renew it with ssl.renew")
        return parsed

    def _cert(self, name: str, domains: list[str], ctx: ActionContext) -> Certificate:
        try:
            return resolve(provisioned_spec(_store(ctx), name, domains), _section(ctx))
        except (ValueError, ValidationError) as e:
            raise ActionError(f"cannot provision {name!r}: {e}") from None

    async def plan(self, args: ProvisionArgs, ctx: ActionContext) -> Plan:  # type: ignore[override]
        cert = self._cert(args.name, args.domains, ctx)
        from ..certs.renew import current_state

        state = await asyncio.to_thread(current_state, cert)
        return self._plan(args, cert, state, f"provision certificate {cert.name} for {', '.join(cert.domains)}")

    async def apply(self, plan: Plan, ctx: ActionContext) -> Outcome:
        check_domains(plan.args["domains"], ctx.constraints.domains)
        cert = self._cert(plan.args["name"], plan.args["domains"], ctx)
        outcome = await self._apply(plan, cert, ctx)
        if outcome.ok:  # remembered, so ssl.renew NAME renews it later
            record = cert.cert_path.parent / "domains.json"
            await asyncio.to_thread(record.write_text, json.dumps(list(cert.domains)))
        return outcome
