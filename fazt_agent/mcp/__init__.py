"""The MCP server: tools, resources and prompts over stdio and streamable HTTP, bearer tokens
with scopes, approvals through elicitation or halts, and an `mcp.call` event for every call.

`auth`, `events` and `http` do not import the `mcp` SDK at module level (the others do): the
daemon imports the SDK (about 30 MB) only when `/mcp` is first used (see `http.McpMount`).
"""
