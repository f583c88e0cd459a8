"""`fazt-agent tokens create|list|revoke` and `mcp serve` usage, through the real CLI and SQLite."""

from __future__ import annotations

import hashlib
import json
import sqlite3

from _mcp import events
from conftest import Ops


def test_a_token_is_printed_once_and_only_its_sha256_is_stored(ops: Ops) -> None:
    created = ops.cli("tokens", "create", "laptop", "--scope", "operate")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("fzt_") and len(token) >= 40 and "\n" not in token
    assert "shown only this once" in created.stderr
    with sqlite3.connect(ops.data_dir / "fazt-agent.db") as db:
        rows = db.execute("SELECT name, scope, hash FROM tokens").fetchall()
        dump = "\n".join(db.iterdump())
    assert rows == [("laptop", "operate", hashlib.sha256(token.encode()).hexdigest())]
    assert token not in dump
    listed = ops.cli("tokens", "list")
    assert "laptop" in listed.stdout and "operate" in listed.stdout and "never" in listed.stdout
    assert token not in listed.stdout + ops.cli("tokens", "list", "--json").stdout
    assert [e["data"] for e in events(ops, "token.*")] == [{"name": "laptop", "scope": "operate"}]


def test_tokens_refuse_a_duplicate_name_a_bad_scope_and_revoking_an_unknown_one(ops: Ops) -> None:
    assert ops.cli("tokens", "create", "ci", "--scope", "read").returncode == 0
    duplicate = ops.cli("tokens", "create", "ci", "--scope", "admin")
    assert duplicate.returncode == 1 and "already exists" in duplicate.stderr and "Traceback" not in duplicate.stderr
    bad_scope = ops.cli("tokens", "create", "other", "--scope", "root")
    assert bad_scope.returncode == 1 and "unknown scope 'root'" in bad_scope.stderr
    bad_name = ops.cli("tokens", "create", "Has Spaces", "--scope", "read")
    assert bad_name.returncode == 1 and "bad token name" in bad_name.stderr
    unknown = ops.cli("tokens", "revoke", "nobody")
    assert unknown.returncode == 1 and "no active token named 'nobody'" in unknown.stderr


def test_a_revoked_name_can_be_reused_and_list_all_shows_the_revoked_one(ops: Ops) -> None:
    first = ops.cli("tokens", "create", "ci", "--scope", "read").stdout.strip()
    assert ops.cli("tokens", "revoke", "ci").stdout.startswith("revoked token 'ci'")
    second = ops.cli("tokens", "create", "ci", "--scope", "admin", "--json")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["token"] != first
    active = json.loads(ops.cli("tokens", "list", "--json").stdout)
    everything = json.loads(ops.cli("tokens", "list", "--all", "--json").stdout)
    assert [(t["name"], t["scope"]) for t in active] == [("ci", "admin")]
    assert sorted((t["scope"], t["revoked_at"] is None) for t in everything) == [("admin", True), ("read", False)]


def test_mcp_serve_needs_exactly_one_transport_and_a_valid_listen_address(ops: Ops) -> None:
    neither = ops.cli("mcp", "serve")
    assert neither.returncode == 2 and "--stdio or --http" in neither.stderr
    both = ops.cli("mcp", "serve", "--stdio", "--http")
    assert both.returncode == 2
    bad = ops.cli("mcp", "serve", "--http", "--listen", "nowhere")
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr
