"""The control plane: /healthz, /metrics, /mcp, /webhooks/alertmanager, signed links and /approvals."""
