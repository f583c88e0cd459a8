// A real TypeScript-SDK MCP client for the fazt-agent tests (driven by tests/test_mcp_js.py).
//
//   node client.mjs '{"stdio": {"command": "python", "args": [...]}, "elicit": "approve", "steps": [...]}'
//   node client.mjs '{"http": {"url": "http://127.0.0.1:7070/mcp", "token": "fzt_..."}, "steps": [...]}'
//
// "elicit": "approve" | "deny" | "decline" | "cancel" declares the elicitation capability and answers
// every elicitation that way; without it the client declares no elicitation. Each step is
// {"op": "listTools" | "callTool" | "listResources" | "readResource" | "listPrompts" | "getPrompt", ...}.
// Prints one JSON object: {"server": ..., "results": [...], "elicitations": [...]} or {"error": ...}.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { ElicitRequestSchema } from "@modelcontextprotocol/sdk/types.js";

const spec = JSON.parse(process.argv[2]);
const elicitations = [];
const client = new Client({ name: "fazt-agent-js-tests", version: "1.0.0" },
  { capabilities: spec.elicit ? { elicitation: {} } : {} });
if (spec.elicit) {
  client.setRequestHandler(ElicitRequestSchema, async (request) => {
    elicitations.push(request.params.message);
    if (spec.elicit === "approve" || spec.elicit === "deny") {
      return { action: "accept", content: { decision: spec.elicit, note: "answered by the TypeScript client" } };
    }
    return { action: spec.elicit };
  });
}

const transport = spec.stdio
  ? new StdioClientTransport({ ...spec.stdio, env: process.env, stderr: "inherit" })
  : new StreamableHTTPClientTransport(new URL(spec.http.url),
    { requestInit: { headers: spec.http.token ? { Authorization: `Bearer ${spec.http.token}` } : {} } });

async function step(s) {
  switch (s.op) {
    case "listTools": return client.listTools();
    case "callTool": return client.callTool({ name: s.name, arguments: s.arguments ?? {} });
    case "listResources": return client.listResources();
    case "readResource": return client.readResource({ uri: s.uri });
    case "listPrompts": return client.listPrompts();
    case "getPrompt": return client.getPrompt({ name: s.name, arguments: s.arguments ?? {} });
    default: throw new Error(`unknown op ${s.op}`);
  }
}

let output;
try {
  await client.connect(transport);
  const results = [];
  for (const s of spec.steps) {
    try {
      results.push(await step(s));
    } catch (e) {
      results.push({ thrown: String(e?.message ?? e) });
    }
  }
  output = { server: client.getServerVersion(), protocol: transport.protocolVersion ?? null, results, elicitations };
} catch (e) {
  output = { error: String(e?.message ?? e), code: e?.code ?? null };
} finally {
  await client.close().catch(() => {});
}
process.stdout.write(JSON.stringify(output) + "\n");
