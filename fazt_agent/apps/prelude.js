// The globals of one request, evaluated in a fresh QuickJS context that the worker prepares
// before the request arrives; `__start(jobJson)` then sets the request's values, and api/main.js
// runs. `__host(op, argsJson)` is set by the worker; it never throws, it answers {"v": value} or
// {"e": message}, turned into a JS Error here.
(function () {
  let job = null;
  const host = function (op) {
    const args = Array.prototype.slice.call(arguments, 1);
    const r = JSON.parse(__host(op, JSON.stringify(args)));
    if (Object.prototype.hasOwnProperty.call(r, "e")) throw new Error(r.e);
    return r.v;
  };
  const text = function (args) {
    return Array.prototype.map.call(args, function (x) {
      if (typeof x === "string") return x;
      if (x instanceof Error) return String(x);
      try { const s = JSON.stringify(x); return s === undefined ? String(x) : s; } catch (e) { return String(x); }
    }).join(" ");
  };
  const logger = function (level) { return function () { host("log", level, text(arguments)); }; };
  const log = { log: logger("info"), info: logger("info"), warn: logger("warn"), error: logger("error"),
                debug: logger("debug") };
  globalThis.console = log;
  globalThis.respond = function (a, b, c) {
    if (arguments.length === 1) {
      return typeof a === "number" ? { status: a, body: "", headers: {} } : { status: 200, body: a, headers: {} };
    }
    return { status: a, body: b === undefined ? "" : b, headers: c || {} };
  };
  let env = {};
  globalThis.fazt = {
    app: {
      id: null, name: null,
      kv: {
        set: function (k, v, ttl) { return host("kv.set", k, v === undefined ? null : v, ttl === undefined ? null : ttl); },
        get: function (k) { return host("kv.get", k); },
        delete: function (k) { return host("kv.delete", k); },
        list: function (p) { return host("kv.list", p === undefined ? "" : p); },
      },
      ds: {
        insert: function (c, d) { return host("ds.insert", c, d); },
        find: function (c, q, o) { return host("ds.find", c, q || {}, o || {}); },
        findOne: function (c, q) { return host("ds.findOne", c, q || {}); },
        update: function (c, q, u) { return host("ds.update", c, q || {}, u); },
        delete: function (c, q) { return host("ds.delete", c, q || {}); },
        count: function (c, q) { return host("ds.count", c, q || {}); },
      },
    },
    env: {
      get: function (k, d) { return Object.prototype.hasOwnProperty.call(env, k) ? env[k] : (d === undefined ? null : d); },
      has: function (k) { return Object.prototype.hasOwnProperty.call(env, k); },
    },
    log: log,
  };
  const modules = {};
  const load = function (from, spec) {
    const found = host("require", from, spec);
    if (Object.prototype.hasOwnProperty.call(modules, found.path)) return modules[found.path].exports;
    const module = { exports: {}, id: found.path };
    modules[found.path] = module;   // before running it: a circular require gets the partial exports
    const fn = new Function("module", "exports", "require", found.source + "\n//# sourceURL=" + found.path);
    fn(module, module.exports, function (s) { return load(found.path, s); });
    return module.exports;
  };
  globalThis.require = function (spec) { return load("api/main.js", spec); };
  globalThis.__start = function (text) {
    job = JSON.parse(text);
    env = job.env;
    globalThis.request = job.request;
    globalThis.fazt.app.id = job.app.id;
    globalThis.fazt.app.name = job.app.name;
    delete globalThis.__start;
  };
  globalThis.__run = function (src) {
    let v;
    try {
      v = (0, eval)(src);
    } catch (e) {
      return JSON.stringify({ error: e instanceof Error ? (e.name === "Error" ? e.message : e.name + ": " + e.message) : String(e) });
    }
    if (v && typeof v.then === "function") return JSON.stringify({ error: "api/main.js must answer synchronously (it returned a Promise)" });
    let out;
    if (v === undefined || v === null) out = { status: 204, body: "", string: true };
    else if (typeof v === "object" && typeof v.status === "number" &&
             Object.keys(v).every(function (k) { return k === "status" || k === "body" || k === "headers"; })) {
      out = { status: v.status, headers: v.headers || {}, body: v.body, string: typeof v.body === "string" };
      if (v.body === undefined || v.body === null) { out.body = ""; out.string = true; }
    } else out = { status: 200, body: v, string: typeof v === "string" };
    if (!out.string) out.body = JSON.stringify(out.body);
    return JSON.stringify(out);
  };
})();
