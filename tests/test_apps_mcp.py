"""Apps, slice 4 (issue 13): the apps MCP tools and resources through the real `mcp` client over
stdio, beside a real daemon whose apps plane is called with a real HTTP client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from _helpers import events
from _mcp import stdio_client
from test_apps_deploy import Plane, plane  # noqa: F401 (plane is a fixture)

APP_TOOLS = {"fazt_apps_list", "fazt_app_info", "fazt_deploy", "fazt_app_releases", "fazt_app_rollback",
             "fazt_app_logs", "fazt_app_delete"}


async def call(client: Any, name: str, args: dict[str, Any]) -> Any:
    result = await client.call_tool(name, args)
    assert not result.is_error, (name, result.content)
    return result.structured_content


async def test_deploy_rollback_logs_and_delete_over_mcp(plane: Plane, tmp_path: Path) -> None:
    ops = plane.ops
    ops.set_config("agent", "autonomy", "high")
    async with stdio_client(ops) as client:
        listed = {t.name: t for t in (await client.list_tools()).tools}
        assert APP_TOOLS <= set(listed)
        assert listed["fazt_app_delete"].annotations.destructive_hint is True
        assert listed["fazt_apps_list"].annotations.read_only_hint is True

        one = await call(client, "fazt_deploy", {"app_name": "mcpapp", "files": {
            "index.html": "first", "api/main.js": "console.log('hit', request.path); ({release: 1})"}})
        assert one["release"] == 1 and one["healthy"] is True and one["files"] == 2
        two = await call(client, "fazt_deploy", {"app_name": "mcpapp", "files": {"index.html": "second"}})
        assert two["release"] == 2 and two["previous"] == 1
        assert plane.get("mcpapp").text == "second"

        refused = await client.call_tool("fazt_deploy", {"app_name": "mcpapp", "files": {"../up.html": "x"}})
        assert refused.is_error and "'..' is not allowed" in refused.content[0].text

        listing = await call(client, "fazt_apps_list", {})
        assert [(a["name"], a["release"]) for a in listing["apps"]] == [("mcpapp", 2)]
        releases = await call(client, "fazt_app_releases", {"name": "mcpapp"})
        assert [(r["number"], r["current"]) for r in releases["releases"]] == [(2, True), (1, False)]

        back = await call(client, "fazt_app_rollback", {"name": "mcpapp"})
        assert back == {"app": "mcpapp", "from_release": 2, "to_release": 1}
        assert plane.get("mcpapp").text == "first"
        assert plane.get("mcpapp", "/api/x").json() == {"release": 1}
        logs = await call(client, "fazt_app_logs", {"name": "mcpapp"})
        assert "hit /api/x" in [e["message"] for e in logs["logs"]]

        info = await call(client, "fazt_app_info", {"name": "mcpapp"})
        assert info["release"] == 1 and info["serverless"] is True
        resource = json.loads((await client.read_resource("fazt://apps")).contents[0].text)
        assert [a["name"] for a in resource["apps"]] == ["mcpapp"]
        one_app = json.loads((await client.read_resource("fazt://apps/mcpapp")).contents[0].text)
        assert one_app["release"] == 1 and len(one_app["release_list"]) == 2

        asked = await call(client, "fazt_app_delete", {"name": "mcpapp"})   # high autonomy: still asks
        assert asked["verdict"] == "ask" and asked["halt_id"] is not None
        assert asked["plan"]["risk"] == "destructive"
        assert plane.get("mcpapp").text == "first"                        # nothing deleted yet
        missing = await client.call_tool("fazt_app_info", {"name": "nope"})
        assert missing.is_error and "no app named 'nope'" in missing.content[0].text
    deployed = [e["data"]["source"] for e in events(ops, "app.deployed")]
    assert deployed == ["mcp:stdio", "mcp:stdio"]
    assert ops.cli("approve", str(asked["halt_id"])).returncode == 0
    assert plane.get("mcpapp").status_code == 404
