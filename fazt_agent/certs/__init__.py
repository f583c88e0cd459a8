"""Certificates: x509 helpers, renewal timing, ACME issuance, challenge answering, installation.

    config.py      [certs] and [[certificates]] settings (kernel/*.toml), resolved per certificate
    x509.py        parsing PEM, key match, names, fingerprints, new keys and CSRs
    window.py      renewal timing and expiry judgement: pure functions (certbot's rule by default)
    probe.py       what a TLS endpoint serves, and whether its chain is valid for a name
    problems.py    ACME problem documents and the retry policy (pure)
    acme_client.py the ACME (RFC 8555) adapter around certbot's `acme` library
    challenges.py  HTTP-01 (own listener or webroot) and DNS-01 (owner's hook) solvers
    install.py     atomic installation of a chain and key, with backup and restore
    renew.py       one renewal, closed loop: issue, install, reload, verify, or restore

Heavy imports (`acme`, `josepy`) happen only in acme_client.py, which renew.py imports when it runs.
"""
