"""`fazt-agent decisions ...` and `fazt-agent pulse ask`: the LLM planner's records (issue: LLM decisions)."""

from __future__ import annotations

import typer

decisions_app = typer.Typer(help="Decisions the agent made (rules or LLM), with their reasons.", no_args_is_help=True)
