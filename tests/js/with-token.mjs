// Preload (`node --import ./with-token.mjs ...`): every HTTP request this process makes carries
// `Authorization: Bearer $FAZT_MCP_TOKEN`, the way a configured MCP client sends its token. The
// conformance suite has no option for a token; its requests keep their own Host and Origin headers.
import { Agent, setGlobalDispatcher } from "undici";

const token = process.env.FAZT_MCP_TOKEN;
if (!token) throw new Error("with-token.mjs: set FAZT_MCP_TOKEN");

function withAuth(headers) {
  const out = [];
  if (Array.isArray(headers)) {
    if (headers.length && Array.isArray(headers[0])) for (const [k, v] of headers) out.push(k, v);
    else out.push(...headers);
  } else if (headers && typeof headers[Symbol.iterator] === "function") {
    for (const [k, v] of headers) out.push(k, v);
  } else if (headers) {
    for (const [k, v] of Object.entries(headers)) out.push(k, v);
  }
  for (let i = out.length - 2; i >= 0; i -= 2) if (String(out[i]).toLowerCase() === "authorization") out.splice(i, 2);
  out.push("authorization", `Bearer ${token}`);
  return out;
}

setGlobalDispatcher(new Agent().compose((dispatch) => (opts, handler) =>
  dispatch({ ...opts, headers: withAuth(opts.headers) }, handler)));
