"""One renewal, closed loop: issue, install, reload, verify — or restore the previous files.

    1. a new key and CSR; the ACME order, its challenges and the chain (acme_client.py);
    2. the chain must parse, cover the domains and match the key before anything is written;
    3. install both files atomically, the previous ones kept (install.py);
    4. the installed files are read back and checked; the owner's reload hook runs;
    5. with `verify_tls`, the endpoint must serve the new leaf within `verify_timeout`.

A failure after step 3 restores the previous files and runs the reload hook again, so the
server goes back to what it served; the outcome says what failed and that it was restored.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shlex
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .. import _proc
from ..errors import ActionError, CheckError
from ..kernel.base import Outcome
from . import x509 as x
from .config import NO_CERT, Certificate, CertsSettings
from .install import Backup, install, restore
from .probe import served_chain


def current_state(cert: Certificate) -> dict[str, Any]:
    """What `cert.cert_path` holds now: its fingerprint ("none" without a readable certificate)."""
    try:
        leaf = x.load_chain(cert.cert_path.read_bytes(), str(cert.cert_path))[0]
    except FileNotFoundError:
        return {"fingerprint": NO_CERT, "problem": "no certificate yet"}
    except (OSError, x.CertError) as e:
        return {"fingerprint": NO_CERT, "problem": str(e)}
    seen = x.info(leaf)
    return {"fingerprint": seen.fingerprint, "not_after": seen.to_json()["not_after"], "issuer": seen.issuer}


@contextmanager
def renewal_lock(data_dir: Path, name: str) -> Iterator[None]:
    """Exclusive across processes (daemon and CLI) for one certificate name."""
    folder = data_dir / "acme" / "locks"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(folder / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ActionError(f"another renewal of {name!r} is running; try again when it is done",
                              permanent=False) from None
        yield
    finally:
        os.close(fd)


async def renew(cert: Certificate, section: CertsSettings, data_dir: Path, expected: str) -> Outcome:
    """Issue and install `cert`, provided its file still holds the certificate `expected`.

    Raises:
        ActionError: another renewal runs, or the file changed since the plan.
    """
    from .acme_client import AcmeClient
    from .challenges import solver_for
    from .problems import AcmeProblem

    with renewal_lock(data_dir, cert.name):
        now = (await asyncio.to_thread(current_state, cert))["fingerprint"]
        if now != expected:
            raise ActionError(f"{cert.cert_path} changed since this plan was made (another renewal?); plan again")
        key = await asyncio.to_thread(x.new_key, cert.key_type)
        client = AcmeClient(cert.directory, data_dir / "acme", ca_bundle=cert.ca_bundle, email=cert.email,
                            retry_budget=section.retry_budget)
        solver = solver_for(cert.challenge, listen=cert.listen, webroot=cert.webroot, dns_hook=cert.dns_hook,
                            hook_timeout=section.hook_timeout)
        details: dict[str, Any] = {"certificate": cert.name, "domains": list(cert.domains), "retries": client.retries}
        start = time.monotonic()
        try:
            fullchain = await client.issue(x.csr_pem(key, cert.domains), solver, section.timeout)
        except AcmeProblem as e:
            return Outcome(False, f"{e}; the current certificate is unchanged",
                           {**details, "step": e.step, "problem": e.problem.to_json()})
        except ActionError as e:
            return Outcome(False, f"{e}; the current certificate is unchanged", details)
        details["issued_in_s"] = round(time.monotonic() - start, 3)
        try:
            chain = x.load_chain(fullchain, "the issued chain")
        except x.CertError as e:
            return Outcome(False, f"{e}; the current certificate is unchanged", details)
        problem = _mismatch(chain[0], key, cert.domains)
        if problem:
            return Outcome(False, f"the issued certificate {problem}; the current certificate is unchanged", details)
        new = x.info(chain[0])
        details.update(fingerprint=new.fingerprint, not_after=new.to_json()["not_after"], issuer=new.issuer,
                       previous_fingerprint=expected)
        try:
            backup = await asyncio.to_thread(install, cert.cert_path, fullchain, cert.key_path, x.key_pem(key))
        except OSError as e:
            return Outcome(False, f"cannot install the new certificate: {e}; the current certificate is unchanged",
                           details)
        details["kept"] = backup.kept
        problem = await _verify(cert, section, new.fingerprint, details)
        if problem:
            await _restore(cert, section, backup, details)
            return Outcome(False, f"{problem}; restored the previous certificate", details)
        served = f", served at {cert.verify_tls}" if cert.verify_tls else ""
        return Outcome(True, f"renewed {cert.name}: valid until {new.not_after:%Y-%m-%d}{served}", details)


def _mismatch(leaf: Any, key: Any, domains: tuple[str, ...]) -> str | None:
    if not x.key_matches(leaf, key):
        return "does not match the key it was requested for"
    missing = [d for d in domains if d not in x.names(leaf)]
    return f"does not cover {', '.join(missing)}" if missing else None


async def _verify(cert: Certificate, section: CertsSettings, fingerprint: str, details: dict[str, Any]) -> str | None:
    """Why the installed certificate is not in force, or None: files, reload hook, live endpoint."""
    try:
        chain_pem, key_pem = await asyncio.to_thread(lambda: (cert.cert_path.read_bytes(), cert.key_path.read_bytes()))
        leaf = x.load_chain(chain_pem, str(cert.cert_path))[0]
        if x.fingerprint(leaf) != fingerprint or not x.key_matches(leaf, x.load_key(key_pem, str(cert.key_path))):
            return f"{cert.cert_path} and {cert.key_path} do not hold the new certificate and its key after writing"
    except (OSError, x.CertError) as e:
        return f"the installed files cannot be read back: {e}"
    if cert.reload:
        problem = await _reload(cert, section, details, "reload")
        if problem:
            return problem
    if cert.verify_tls:
        return await _served(cert, section, fingerprint, details)
    return None


async def _reload(cert: Certificate, section: CertsSettings, details: dict[str, Any], key: str) -> str | None:
    assert cert.reload is not None
    argv = list(cert.reload)
    try:
        done = await _proc.run(argv, section.hook_timeout)
    except OSError as e:
        details[key] = {"error": str(e)}
        return f"the reload hook failed: {_proc.cannot_start(argv, e)}"
    details[key] = {"exit_code": done.exit_code, "stderr_tail": done.stderr_tail[-500:]}
    if done.timed_out:
        return f"the reload hook did not finish within {section.hook_timeout:g}s ({shlex.join(argv)})"
    if done.exit_code != 0:
        last = f": {done.last_error_line}" if done.last_error_line else ""
        return f"the reload hook {shlex.join(argv)} failed with exit code {done.exit_code}{last}"
    return None


async def _served(cert: Certificate, section: CertsSettings, fingerprint: str, details: dict[str, Any]) -> str | None:
    """Wait up to `verify_timeout` for `verify_tls` to serve the leaf `fingerprint`."""
    assert cert.verify_tls is not None
    host, _, port = cert.verify_tls.rpartition(":")
    sni = cert.verify_sni or cert.domains[0].removeprefix("*.")
    deadline = time.monotonic() + section.verify_timeout
    delay, seen = 0.05, "nothing"
    while True:
        try:
            chain = await served_chain(host.strip("[]"), int(port), sni, min(5.0, section.verify_timeout))
            seen = x.fingerprint(chain[0]) if chain else "no certificate"
        except CheckError as e:
            seen = str(e)
        if seen == fingerprint:
            details["verified_served"] = {"address": cert.verify_tls, "sni": sni}
            return None
        if time.monotonic() + delay > deadline:
            details["served"] = seen
            return (f"{cert.verify_tls} (SNI {sni}) does not serve the new certificate after "
                    f"{section.verify_timeout:g}s (it serves {seen[:64]})")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


async def _restore(cert: Certificate, section: CertsSettings, backup: Backup, details: dict[str, Any]) -> None:
    await asyncio.to_thread(restore, backup)
    details["restored"] = True
    if cert.reload:
        problem = await _reload(cert, section, details, "reload_after_restore")
        if problem:
            details["reload_after_restore_problem"] = problem
