"""The MCP server: tools, resources and prompts over stdio and streamable HTTP, bearer tokens
with scopes, approvals through elicitation or halts, and an `mcp.call` event for every call.

`auth`, `events`, `http` and `worker` do not import the `mcp` SDK at module level (the others
do). The daemon never imports it: its /mcp passes requests to a worker process that does
(`worker.McpWorker`), started at the first request and stopped when idle.
"""
