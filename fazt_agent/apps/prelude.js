// The JS side of one request. The worker evaluates the core (everything above the first `//# part`
// line) in a fresh QuickJS context before the request arrives, then calls `__run(source, request)`.
// QuickJS compiles at ~50 us per KB and this happens for every request, so the core is small:
// `console`, `fazt` and `require` are accessors that compile their part (below) on first use, so
// a handler that never touches them never pays for them. A part is an arrow `use => value`:
// `use(name)` is another part's value, compiled at most once per request. (A block and arrows,
// not `(function () {...})()`: QuickJS scans a parenthesised function twice to rule out an arrow.)
// `__host(op, argsJson)` and `__part(name)` are set by the worker and never throw: __host answers
// {"v": value} or {"e": message}, turned into a JS Error here; __part answers a part's source.
{
  const g = globalThis, ev = eval, parts = {};
  const use = function (name) { return parts[name] || (parts[name] = ev(__part(name))(use)); };
  // getter lazy(name), setter lazy(name, v): either way a plain global from then on
  const lazy = function (name, v) {
    Object.defineProperty(g, name, { value: arguments.length > 1 ? v : use(name), writable: true, enumerable: true,
                                     configurable: true });
    return g[name];
  };
  for (const name of ["console", "fazt", "require"]) {
    const accessor = lazy.bind(null, name);
    Object.defineProperty(g, name, { get: accessor, set: accessor, enumerable: true, configurable: true });
  }
  g.respond = function (a, b, c) {
    return arguments.length === 1 && typeof a !== "number" ? { status: 200, body: a, headers: {} }
      : { status: a, body: b === undefined ? "" : b, headers: c || {} };
  };
  // the answer as JSON: {error} or {status, headers, body, json}; `json` when body was encoded here
  g.__run = function (src, req) {
    delete g.__run;
    g.request = JSON.parse(req);
    let v;
    try {
      v = ev(src);
    } catch (e) {
      return JSON.stringify({ error: e instanceof Error ? (e.name === "Error" ? "" : e.name + ": ") + e.message : String(e) });
    }
    if (v && typeof v.then === "function") return '{"error": "api/main.js must answer synchronously (it returned a Promise)"}';
    const r = v && typeof v === "object" && typeof v.status === "number" &&
              Object.keys(v).every(function (k) { return k === "status" || k === "body" || k === "headers"; });
    const body = r ? v.body : v;
    return JSON.stringify({ status: r ? v.status : v == null ? 204 : 200, headers: r && v.headers || {},
                            body: typeof body === "string" ? body : body == null ? "" : JSON.stringify(body),
                            json: typeof body !== "string" && body != null });
  };
}
//# part host
// host(op, args): the worker's answer to `op`, or a JS Error with its message
use => function (op, args) {
  const r = JSON.parse(__host(op, JSON.stringify(args)));
  if (Object.prototype.hasOwnProperty.call(r, "e")) throw new Error(r.e);
  return r.v;
}
//# part console
use => {
  const host = use("host");
  const text = function (args) {
    return Array.prototype.map.call(args, function (x) {
      if (typeof x === "string") return x;
      if (x instanceof Error) return String(x);
      try { const s = JSON.stringify(x); return s === undefined ? String(x) : s; } catch (e) { return String(x); }
    }).join(" ");
  };
  const logger = function (level) { return function () { host("log", [level, text(arguments)]); }; };
  return { log: logger("info"), info: logger("info"), warn: logger("warn"), error: logger("error"),
           debug: logger("debug") };
}
//# part fazt
// each function passes exactly `arity` arguments (a missing one as null); the worker fills defaults
use => {
  const host = use("host");
  const app = host("app", []);
  const env = app.env;
  const ops = function (prefix, arity) {
    const o = {};
    Object.keys(arity).forEach(function (name) {
      o[name] = function () {
        const args = Array.prototype.slice.call(arguments, 0, arity[name]);
        args.length = arity[name];
        return host(prefix + name, args);
      };
    });
    return o;
  };
  return {
    app: { id: app.id, name: app.name, kv: ops("kv.", { set: 3, get: 1, delete: 1, list: 1 }),
           ds: ops("ds.", { insert: 2, find: 3, findOne: 2, update: 3, delete: 2, count: 2 }) },
    env: {
      get: function (k, d) { return Object.prototype.hasOwnProperty.call(env, k) ? env[k] : (d === undefined ? null : d); },
      has: function (k) { return Object.prototype.hasOwnProperty.call(env, k); },
    },
    log: use("console"),
  };
}
//# part require
// a module cache per request; a module is in it before it runs, so a cycle gets partial exports
use => {
  const host = use("host");
  const modules = {};
  const load = function (from, spec) {
    const found = host("require", [from, spec]);
    if (Object.prototype.hasOwnProperty.call(modules, found.path)) return modules[found.path].exports;
    const module = { exports: {}, id: found.path };
    modules[found.path] = module;
    const fn = new Function("module", "exports", "require", found.source + "\n//# sourceURL=" + found.path);
    fn(module, module.exports, function (s) { return load(found.path, s); });
    return module.exports;
  };
  return function (spec) { return load("api/main.js", spec); };
}
