"""`fazt-agent mcp serve` and `fazt-agent tokens ...` (issue: MCP control)."""

from __future__ import annotations

import typer

mcp_app = typer.Typer(help="The MCP server for Claude Code, Claude Desktop or any MCP client.", no_args_is_help=True)
tokens_app = typer.Typer(help="Bearer tokens for the MCP server over HTTP.", no_args_is_help=True)
