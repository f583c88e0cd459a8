"""The ACME (RFC 8555) adapter around certbot's `acme` library: account, order, challenges, chain.

Every blocking library call runs in a thread (`asyncio.to_thread`); polling waits with
`asyncio.sleep`, starting at 50 ms and backing off to 1 s (or the server's Retry-After, at most
10 s). A
problem document from the server is retried or not by `problems.retry_delay`, and surfaces as
`AcmeProblem` with the document. The account key lives in DATA_DIR/acme/, mode 0600, and is
never logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from dataclasses import replace
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Callable, TypeVar

import josepy as jose
import requests
from acme import client, errors, messages
from cryptography.hazmat.primitives.asymmetric import ec

from .. import __version__
from ..errors import ActionError
from .challenges import Solver
from .problems import MAX_ATTEMPTS, AcmeProblem, Problem, problem_from_json, retry_delay

T = TypeVar("T")
FIRST_POLL, LAST_POLL = 0.05, 1.0


class _Network(client.ClientNetwork):
    """Remembers the last response's status and Retry-After, which the library's errors drop."""

    last_status: int | None = None
    last_retry_after: str | None = None

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        response = super()._send_request(method, url, *args, **kwargs)
        self.last_status, self.last_retry_after = response.status_code, response.headers.get("Retry-After")
        return response


def _seconds(retry_after: str | None) -> float | None:
    if not retry_after:
        return None
    if retry_after.strip().isdigit():
        return float(retry_after)
    try:
        return max(0.0, parsedate_to_datetime(retry_after).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def account_key(folder: Path, directory: str) -> jose.JWKEC:
    """The account key for `directory`, made (P-256, mode 0600) on first use.

    Raises:
        ActionError: the stored key cannot be read.
    """
    path = folder / f"{hashlib.sha256(directory.encode()).hexdigest()[:16]}.json"
    try:
        return jose.JWKEC.json_loads(json.loads(path.read_text())["key"])
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError, jose.errors.Error) as e:
        raise ActionError(f"the ACME account key {path} cannot be read ({type(e).__name__}); move it away "
                          "to register a new account") from None
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with open(fd, "w") as out:
        json.dump({"directory": directory, "key": key.json_dumps()}, out)
        out.flush()
        os.fsync(out.fileno())
    return key


class AcmeClient:
    """One issuance session against one ACME directory."""

    def __init__(self, directory: str, account_dir: Path, *, ca_bundle: Path | None, email: str | None,
                 retry_budget: float):
        self.directory, self.account_dir = directory, account_dir
        self.ca_bundle, self.email, self.retry_budget = ca_bundle, email, retry_budget
        self.retries: list[dict[str, Any]] = []
        self.waited = 0.0
        self.deadline = 0.0
        self.net: _Network | None = None

    async def issue(self, csr: bytes, solver: Solver, timeout: float) -> bytes:
        """Order a certificate for `csr`, answer its challenges with `solver`; the full chain (PEM).

        Every retry is recorded in `self.retries`.

        Raises:
            AcmeProblem: the server refused a step (the problem document is attached).
            ActionError: the challenge cannot be answered, or the deadline passed.
        """
        self.deadline = time.monotonic() + timeout
        key = await asyncio.to_thread(account_key, self.account_dir, self.directory)
        acme = await self._connect(key)
        order = await self._call("order", acme.new_order, csr)
        async with solver:
            answers = []
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue  # the server still trusts an earlier validation
                challb = self._pick(authz, solver.challenge_type)
                response, validation = challb.response_and_validation(key)
                await solver.present(authz.body.identifier.value, challb.chall.encode("token"), validation)
                answers.append((authz, challb, response))
            for _, challb, response in answers:
                await self._call("challenge", acme.answer_challenge, challb, response)
            for authz, _, _ in answers:
                await self._wait_valid(acme, authz)
        await self._call("finalize", acme.begin_finalization, order)
        return (await self._wait_chain(acme, order)).encode()

    async def _connect(self, key: jose.JWKEC) -> client.ClientV2:
        # verify_ssl goes to requests' `verify`, which also takes a CA bundle path
        verify: Any = str(self.ca_bundle) if self.ca_bundle else True
        self.net = net = _Network(key, alg=jose.ES256, verify_ssl=verify, user_agent=f"fazt-agent/{__version__}")
        directory = await self._call("directory", client.ClientV2.get_directory, self.directory, net)
        acme = client.ClientV2(directory, net)
        registration = messages.NewRegistration.from_data(email=self.email, terms_of_service_agreed=True)
        try:
            await self._call("account", acme.new_account, registration)
        except errors.ConflictError as existing:  # this key already has an account: use it
            net.account = messages.RegistrationResource(body=messages.Registration(), uri=existing.location)
        return acme

    @staticmethod
    def _pick(authz: messages.AuthorizationResource, kind: str) -> messages.ChallengeBody:
        offered = [c for c in authz.body.challenges if c.chall.typ == kind]
        if not offered:
            types = ", ".join(sorted(c.chall.typ for c in authz.body.challenges))
            raise ActionError(f"the ACME server offers no {kind} challenge for {authz.body.identifier.value} "
                              f"(only {types}); choose another `challenge`")
        return offered[0]

    async def _wait_valid(self, acme: client.ClientV2, authz: messages.AuthorizationResource) -> None:
        domain = authz.body.identifier.value
        delay = FIRST_POLL
        while True:
            authz, response = await self._call("authorization", acme.poll, authz)
            status = authz.body.status
            if status == messages.STATUS_VALID:
                return
            if status != messages.STATUS_PENDING:
                failed = [c["error"] for c in response.json().get("challenges", []) if c.get("error")]
                problem = problem_from_json(failed[0]) if failed else \
                    Problem("invalid", f"the authorization is {status.name}")
                raise AcmeProblem("challenge", replace(problem, identifier=problem.identifier or domain))
            delay = await self._pause(delay, response)

    async def _wait_chain(self, acme: client.ClientV2, order: messages.OrderResource) -> str:
        delay = FIRST_POLL
        while True:
            response = await self._call("finalize", self._post_as_get, acme, order.uri)
            body = messages.Order.from_json(response.json())
            if body.status == messages.STATUS_VALID and body.certificate:
                return (await self._call("download", self._post_as_get, acme, body.certificate)).text
            if body.status == messages.STATUS_INVALID:
                error = response.json().get("error")
                raise AcmeProblem("finalize", problem_from_json(error) if isinstance(error, dict) else
                                  Problem("invalid", "the order became invalid without a reason"))
            delay = await self._pause(delay, response)

    @staticmethod
    def _post_as_get(acme: client.ClientV2, url: str) -> requests.Response:
        return acme.net.post(url, None, new_nonce_url=acme.directory["newNonce"])

    async def _pause(self, delay: float, response: requests.Response) -> float:
        wait = min(_seconds(response.headers.get("Retry-After")) or delay, LAST_POLL * 10)
        if time.monotonic() + wait > self.deadline:
            raise ActionError("the ACME server did not finish within the [certs] timeout", permanent=False)
        await asyncio.sleep(wait)
        return min(delay * 2, LAST_POLL)

    async def _call(self, step: str, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a thread, retried per `retry_delay` after an ACME problem."""
        attempt = 0
        while True:
            try:
                return await asyncio.to_thread(fn, *args)
            except messages.Error as e:
                net = self.net
                problem = problem_from_json(json.loads(e.json_dumps()), status=net.last_status if net else None,
                                            retry_after=_seconds(net.last_retry_after if net else None))
            except errors.ConflictError:
                raise
            except (requests.RequestException, errors.ClientError) as e:  # no answer, or not an ACME one (a 502)
                problem = Problem("connection", f"{type(e).__name__}: {e}")
            attempt += 1
            delay = retry_delay(problem, attempt, self.waited, self.retry_budget)
            if delay is None or time.monotonic() + delay > self.deadline:
                raise AcmeProblem(step, problem, permanent=problem.code not in MAX_ATTEMPTS)
            self.retries.append({"step": step, "attempt": attempt, "delay_s": delay, "problem": problem.to_json()})
            self.waited += delay
            await asyncio.sleep(delay)
