"""`fazt-agent certs ...`: certificate inventory and renewal (issue: certificates)."""

from __future__ import annotations

import typer

certs_app = typer.Typer(help="TLS certificates: inventory, expiry, renewal.", no_args_is_help=True)
