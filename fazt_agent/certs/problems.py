"""ACME problem documents (RFC 8555 §6.7, RFC 7807) and when to retry after one (pure).

    badNonce          retried at once, a few times (a stale nonce; the server sends a fresh one)
    rateLimited       retried after Retry-After (else an exponential backoff), only while the total
                      wait stays within the budget; otherwise given up with the time to try again
    serverInternal,   retried with an exponential backoff (1 s, 2 s, 4 s), within the budget
    connection
    anything else     not retried: a failed challenge, a refused CSR, unauthorized, ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ActionError

ACME_ERROR = "urn:ietf:params:acme:error:"
MAX_ATTEMPTS = {"badNonce": 5, "rateLimited": 3, "serverInternal": 3, "connection": 3}


@dataclass(frozen=True)
class Problem:
    """One problem document, as the server sent it (plus where it came from)."""

    type: str
    detail: str
    status: int | None = None
    identifier: str | None = None
    retry_after: float | None = None       # seconds, from the response's Retry-After header
    subproblems: tuple[Problem, ...] = field(default_factory=tuple)

    @property
    def code(self) -> str:
        """The short ACME error code: `badNonce`, `rateLimited`, `unauthorized`, ..."""
        return self.type.removeprefix(ACME_ERROR)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": self.type, "detail": self.detail, "status": self.status}
        if self.identifier:
            data["identifier"] = self.identifier
        if self.retry_after is not None:
            data["retry_after_s"] = self.retry_after
        if self.subproblems:
            data["subproblems"] = [p.to_json() for p in self.subproblems]
        return data

    def __str__(self) -> str:
        where = f" for {self.identifier}" if self.identifier else ""
        return f"{self.code}{where}: {self.detail}"


def problem_from_json(doc: dict[str, Any], *, status: int | None = None, retry_after: float | None = None) -> Problem:
    """A `Problem` from a problem document; `status` (the HTTP status) fills a missing "status"."""
    identifier = doc.get("identifier")
    return Problem(type=str(doc.get("type", "about:blank")), detail=str(doc.get("detail") or doc.get("title") or ""),
                   status=doc.get("status", status), retry_after=retry_after,
                   identifier=identifier.get("value") if isinstance(identifier, dict) else None,
                   subproblems=tuple(problem_from_json(p) for p in doc.get("subproblems") or () if isinstance(p, dict)))


class AcmeProblem(ActionError):
    """The ACME server refused a step; `problem` is its problem document."""

    def __init__(self, step: str, problem: Problem, *, permanent: bool = True):
        super().__init__(f"ACME {step} failed: {problem}", permanent=permanent)
        self.step = step
        self.problem = problem


def retry_delay(problem: Problem, attempt: int, waited: float, budget: float) -> float | None:
    """Seconds to wait before attempt `attempt + 1` after `problem`, or None to give up.

    `attempt` counts the attempts made so far (1 after the first failure); `waited` is the
    time already spent waiting on retries, which never goes beyond `budget`.
    """
    limit = MAX_ATTEMPTS.get(problem.code)
    if limit is None or attempt >= limit:
        return None
    if problem.code == "badNonce":
        return 0.0
    if problem.code == "rateLimited":
        delay = problem.retry_after if problem.retry_after is not None else 30.0 * 2 ** (attempt - 1)
    else:
        delay = problem.retry_after if problem.retry_after is not None else float(2 ** (attempt - 1))
    return delay if waited + delay <= budget else None
