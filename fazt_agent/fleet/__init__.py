"""The fleet: several agents reached from one laptop.

`config.py` keeps the client config (`~/.fazt/config.json`, the Fazt shape) and picks the server a
command means; `ping.py` asks servers, in parallel, whether they answer. Nothing here imports the
MCP SDK, so `fazt-agent servers ...` starts as fast as any other command.
"""

SERVER_HELP = ("Ask another agent instead: NAME from `fazt-agent servers list`, through its /mcp with the "
               "stored token (its scope applies).")
