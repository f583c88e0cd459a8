"""The control-plane HTTP listener: /healthz now; /mcp, approvals, webhooks and /metrics later."""
