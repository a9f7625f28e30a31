// Shared by the console's pages: sign-in fields, the API client with clear errors, the SSE
// reader that resumes a dropped run stream, the approval form and argument validation.

const AUTH_KEY = "agent-console.auth";
export const debug = (window.consoleDebug = {eventIds: [], reconnects: 0, feeds: new Set()});

// ---- sign-in: sent as headers on every request, so the console works once auth lands ----

export function credentials() {
  try {
    return JSON.parse(localStorage.getItem(AUTH_KEY)) || {};
  } catch {
    return {};
  }
}

function authHeaders() {
  const {apiKey, token} = credentials();
  const headers = {};
  if (apiKey) headers["X-API-Key"] = apiKey;
  if (token) headers.Authorization = `Bearer ${token}`;
  return headers;
}

export function reviewer() {
  return credentials().name || "console";
}

/** Wire the header's sign-in panel (API key, bearer token, the name decisions are made as). */
export function setUpSignIn() {
  const form = document.getElementById("signin-form");
  const saved = credentials();
  for (const field of ["apiKey", "token", "name"]) form.elements[field].value = saved[field] || "";
  const summary = document.getElementById("signin-summary");
  const show = () => {
    const c = credentials();
    summary.textContent = c.apiKey || c.token ? `Signed in${c.name ? ` as ${c.name}` : ""}`
      : `Sign in${c.name ? ` (deciding as ${c.name})` : ""}`;
  };
  show();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = Object.fromEntries(
      ["apiKey", "token", "name"].map((f) => [f, form.elements[f].value.trim()]));
    localStorage.setItem(AUTH_KEY, JSON.stringify(value));
    show();
    form.closest("details").open = false;
    document.dispatchEvent(new CustomEvent("signin"));
  });
}

// ---- API client ----

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

const UNREACHABLE = "Cannot reach the cluster: it may be down or restarting. Retrying…";

function explain(status, detail) {
  if (status === 401 || status === 403) {
    return `Not allowed (${status}): ${detail}. Check the API key or token under "Sign in".`;
  }
  if (status === 404) return `Not found: ${detail}`;
  if (status === 409) return `Conflict: ${detail}`;
  if (status === 422) return `Invalid request: ${detail}`;
  if (status === 503) {
    return `The cluster cannot take this now (503): ${detail}. Try again shortly.`;
  }
  if (status === 502 || status === 504) {
    return `The cluster is not answering (HTTP ${status}): it may be down or restarting.`;
  }
  return `The cluster answered ${status}: ${detail}`;
}

async function errorOf(response) {
  let detail = response.statusText;
  try {
    const body = await response.json();
    detail = typeof body.detail === "string" ? body.detail
      : body.detail ? body.detail.map((d) => d.msg || JSON.stringify(d)).join("; ")
      : body.error ? body.error.message || JSON.stringify(body.error) : JSON.stringify(body);
  } catch {
    // not JSON: keep the status text
  }
  return new ApiError(response.status, explain(response.status, detail));
}

async function send(method, path, {body, headers = {}, signal, answers = []} = {}) {
  const init = {method, signal, cache: "no-store", headers: {...authHeaders(), ...headers}};
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, UNREACHABLE);
  }
  if (!response.ok && !answers.includes(response.status)) throw await errorOf(response);
  return response;
}

/** JSON of ``method path``; an ApiError (with a sentence for people) if it fails. */
export async function api(method, path, body) {
  const response = await send(method, path, {body});
  return response.status === 204 ? null : response.json();
}

/** ``{status, body}``, where the error statuses in ``answers`` are answers, not failures. */
export async function call(method, path, body, answers) {
  const response = await send(method, path, {body, answers});
  return {status: response.status, body: await response.json()};
}

// ---- run streams ----

const WATCHDOG_MS = 20000; // the server sends a heartbeat every 5 s

function parseFrame(text) {
  let event = "message";
  let id = null;
  const data = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith(":")) continue; // a heartbeat comment
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
    else if (field === "id") id = value;
  }
  return data.length ? {event, id, data: JSON.parse(data.join("\n"))} : null;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Follows one run's SSE stream to its end. EventSource cannot POST, so this reads fetch()
 * bodies itself; after a dropped connection it joins GET .../runs/{id}/stream (the response's
 * Location) with Last-Event-ID, and the server sends exactly the events after that id.
 */
export class RunFeed {
  constructor(onEvent, onStatus = () => {}) {
    this.onEvent = onEvent;
    this.onStatus = onStatus;
    this.location = null;
    this.lastId = null;
    this.stopped = false;
    this.controller = null;
  }

  /** Start a run (POST .../runs/stream) and follow it; resolves with its end event. */
  start(path, body) {
    return this.follow(() => this.open("POST", path, body));
  }

  /** Follow a run that already exists, from its first event. */
  join(location) {
    this.location = location;
    return this.follow(() => this.open("GET", location));
  }

  /** Stop following (the run goes on in the cluster). */
  stop() {
    this.stopped = true;
    this.controller?.abort();
  }

  /** Cut the connection as a network failure would (a test hook): the feed resumes. */
  drop() {
    this.controller?.abort();
  }

  async open(method, path, body) {
    this.controller = new AbortController();
    const headers = {Accept: "text/event-stream"};
    if (method === "GET" && this.lastId) headers["Last-Event-ID"] = this.lastId;
    const response = await send(method, path, {body, headers, signal: this.controller.signal});
    this.location = response.headers.get("Location") || this.location;
    return response;
  }

  async follow(openFirst) {
    debug.feeds.add(this);
    try {
      let failures = 0;
      for (let first = true; ; first = false) {
        if (this.stopped) return null;
        try {
          const response = first ? await openFirst() : await this.open("GET", this.location);
          if (!first) this.onStatus("");
          const read = await this.read(response);
          if (read.end) return read.end;
          if (read.events) failures = 0;
        } catch (error) {
          if (this.stopped) return null;
          // No run to resume, or the server refused (4xx): nothing a retry would change.
          if (!this.location || (error.status >= 400 && error.status < 500)) throw error;
        }
        failures += 1;
        debug.reconnects += 1;
        const after = this.lastId ? `after event ${this.lastId}` : "from the start";
        this.onStatus(`Connection lost; resuming ${after}…`);
        await sleep(Math.min(250 * 2 ** failures, 8000));
      }
    } finally {
      debug.feeds.delete(this);
    }
  }

  /** Events until ``end`` (or ``error``, which ends a stream too) or the body closes. */
  async read(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let events = 0;
    let watchdog;
    const arm = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => this.drop(), WATCHDOG_MS);
    };
    try {
      for (arm(); ; arm()) {
        const {value, done} = await reader.read();
        if (done) return {events};
        buffer += decoder.decode(value, {stream: true});
        for (let cut = buffer.indexOf("\n\n"); cut >= 0; cut = buffer.indexOf("\n\n")) {
          const frame = parseFrame(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
          if (!frame) continue;
          events += 1;
          if (frame.id) {
            this.lastId = frame.id;
            debug.eventIds.push(frame.id);
          }
          this.onEvent(frame.event, frame.data);
          if (frame.event === "end" || frame.event === "error") {
            return {events, end: {event: frame.event, data: frame.data}};
          }
        }
      }
    } finally {
      clearTimeout(watchdog);
      reader.cancel().catch(() => {});
    }
  }
}

// ---- tool argument schemas and validation ----

let toolSchemas = null;

export async function tools() {
  toolSchemas ??= api("GET", "/ui/api/tools").catch((error) => {
    toolSchemas = null;
    throw error;
  });
  return toolSchemas;
}

function typesOf(schema) {
  if (schema.type) return [].concat(schema.type);
  const options = schema.anyOf || schema.oneOf || [];
  return options.flatMap((option) => typesOf(option));
}

function hasType(value, type) {
  switch (type) {
    case "null": return value === null;
    case "integer": return Number.isInteger(value);
    case "number": return typeof value === "number" && Number.isFinite(value);
    case "array": return Array.isArray(value);
    case "object": return typeof value === "object" && value !== null && !Array.isArray(value);
    default: return typeof value === type;
  }
}

const TYPE_WORDS = {integer: "a whole number", number: "a number", string: "text",
  boolean: "true or false", array: "a list", object: "an object", null: "empty"};

/** Why ``args`` do not fit the tool's JSON schema: a list of sentences (empty if they do). */
export function validateArgs(schema, args) {
  const errors = [];
  for (const name of schema.required || []) {
    if (args[name] === undefined) errors.push(`${name} is required.`);
  }
  const properties = schema.properties || {};
  for (const [name, value] of Object.entries(args)) {
    const rule = properties[name];
    if (!rule) {
      if (schema.additionalProperties === false) errors.push(`${name} is not an argument.`);
      continue;
    }
    const types = typesOf(rule);
    if (types.length && !types.some((type) => hasType(value, type))) {
      errors.push(`${name} must be ${types.map((t) => TYPE_WORDS[t] || t).join(" or ")}.`);
      continue;
    }
    if (rule.enum && !rule.enum.includes(value)) {
      errors.push(`${name} must be one of ${rule.enum.join(", ")}.`);
    }
    if (typeof value === "string") {
      if (rule.minLength !== undefined && value.length < rule.minLength) {
        errors.push(rule.minLength === 1 ? `${name} must not be empty.`
          : `${name} needs at least ${rule.minLength} characters.`);
      }
      if (rule.maxLength !== undefined && value.length > rule.maxLength) {
        errors.push(`${name} takes at most ${rule.maxLength} characters.`);
      }
      if (rule.pattern && !new RegExp(rule.pattern, "u").test(value)) {
        errors.push(`${name} does not match ${rule.pattern}.`);
      }
    }
    if (typeof value === "number") {
      if (rule.minimum !== undefined && value < rule.minimum) {
        errors.push(`${name} must be at least ${rule.minimum}.`);
      }
      if (rule.maximum !== undefined && value > rule.maximum) {
        errors.push(`${name} must be at most ${rule.maximum}.`);
      }
      if (rule.exclusiveMinimum !== undefined && value <= rule.exclusiveMinimum) {
        errors.push(`${name} must be more than ${rule.exclusiveMinimum}.`);
      }
      if (rule.exclusiveMaximum !== undefined && value >= rule.exclusiveMaximum) {
        errors.push(`${name} must be less than ${rule.exclusiveMaximum}.`);
      }
    }
  }
  return errors;
}

// ---- DOM helpers ----

/** An element with attributes and children; text is always set as text, never as HTML. */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

let uniqueIds = 0;
export const uid = (prefix) => `${prefix}-${++uniqueIds}`;

export function textOf(content) {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) {
    return content.map((part) => (typeof part === "string" ? part : part.text || "")).join("");
  }
  return "";
}

export function showError(region, error) {
  region.replaceChildren();
  if (!error) return;
  region.append(h("p", {class: "error", text: error.message || String(error)}));
}

export function since(iso) {
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${seconds % 60} s`;
  const hours = Math.floor(minutes / 60);
  return hours < 48 ? `${hours} h ${minutes % 60} min` : `${Math.floor(hours / 24)} days`;
}

export function formatArgs(args) {
  return h("dl", {class: "args"}, Object.entries(args || {}).map(([key, value]) => [
    h("dt", {text: key}),
    h("dd", {}, h("code", {text: typeof value === "string" ? value : JSON.stringify(value)})),
  ]));
}

// ---- the approval form, in the chat and in the inbox ----

function argField(name, rule, value, required) {
  const id = uid(`arg-${name}`);
  const types = typesOf(rule || {});
  const help = rule?.description ? h("small", {id: `${id}-help`, text: rule.description}) : null;
  const described = help ? `${id}-help` : null;
  let input;
  if (types.includes("boolean")) {
    input = h("input", {id, type: "checkbox", name, "aria-describedby": described});
    input.checked = Boolean(value);
    return h("div", {class: "field check"}, input, h("label", {for: id, text: name}), help);
  }
  const text = value === undefined ? "" : typeof value === "string" ? value : JSON.stringify(value);
  const numeric = types.includes("number") || types.includes("integer");
  input = text.includes("\n") || name === "code"
    ? h("textarea", {id, name, rows: 6, "aria-describedby": described})
    : h("input", {id, name, type: "text", inputmode: numeric ? "decimal" : null,
      "aria-describedby": described});
  input.value = text;
  return h("div", {class: "field"},
    h("label", {for: id, text: `${name}${required ? "" : " (optional)"}`}), input, help);
}

function readField(input, rule) {
  if (input.type === "checkbox") return input.checked;
  const raw = input.value;
  const types = typesOf(rule || {});
  if (raw.trim() === "" && !types.includes("string")) return undefined;
  if (types.includes("number") || types.includes("integer")) {
    const number = Number(raw.trim());
    return Number.isNaN(number) ? raw : number;
  }
  if (types.includes("string")) return raw;
  try {
    return JSON.parse(raw);
  } catch {
    return raw;
  }
}

/**
 * Approve / reject (with a reason) / edit (arguments validated against the tool's schema
 * before anything is sent) one pending call. ``decide(decision)`` sends it and throws an
 * ApiError to show; the form locks while it runs.
 */
export function approvalForm(pending, decide) {
  const reasonId = uid("reason");
  const reason = h("input", {id: reasonId, name: "decision-reason", type: "text",
    autocomplete: "off"});
  const fields = h("fieldset", {class: "edit-args", hidden: true},
    h("legend", {text: `Edit the arguments of ${pending.tool}`}));
  const errors = h("div", {class: "form-errors", role: "alert"});
  const status = h("p", {class: "form-status", role: "status"});
  const button = (label, action, extra = {}) =>
    h("button", {type: "button", "data-action": action, ...extra, text: label});
  const approve = button("Approve", "approve", {class: "primary"});
  const reject = button("Reject", "reject", {class: "danger"});
  const edit = button("Edit arguments…", "edit", {"aria-expanded": "false"});
  const sendEdit = button("Send edited arguments", "send-edit", {class: "primary", hidden: true});
  const form = h("form", {class: "decision", "aria-label": `Decide on ${pending.tool}`},
    fields,
    h("div", {class: "field"}, h("label", {for: reasonId, text: "Reason (needed to reject)"}),
      reason),
    h("div", {class: "buttons"}, approve, reject, edit, sendEdit),
    errors, status);
  let schema = null;

  const lock = (locked) => {
    for (const control of form.querySelectorAll("button, input, textarea")) {
      control.disabled = locked;
    }
  };
  const submit = async (decision, label) => {
    showError(errors, null);
    lock(true);
    status.textContent = `${label}…`;
    try {
      await decide({...decision, by: reviewer()});
      status.textContent = "";
    } catch (error) {
      status.textContent = "";
      showError(errors, error);
      lock(false);
    }
  };
  const openEditor = async () => {
    showError(errors, null);
    try {
      schema = (await tools())[pending.tool]?.schema || {properties: {}};
    } catch (error) {
      showError(errors, error);
      return;
    }
    const properties = schema.properties || {};
    const names = [...new Set([...Object.keys(properties), ...Object.keys(pending.args || {})])];
    fields.replaceChildren(fields.firstChild, ...names.map((name) => argField(
      name, properties[name], pending.args?.[name], (schema.required || []).includes(name))));
    fields.hidden = false;
    sendEdit.hidden = false;
    edit.setAttribute("aria-expanded", "true");
    fields.querySelector("input, textarea")?.focus();
  };
  const sendEdited = () => {
    const args = {};
    for (const input of fields.querySelectorAll("input, textarea")) {
      const value = readField(input, schema.properties?.[input.name]);
      if (value !== undefined) args[input.name] = value;
    }
    const problems = validateArgs(schema, args);
    if (problems.length) {
      errors.replaceChildren(h("p", {class: "error", text: "Not sent: fix the arguments."}),
        h("ul", {}, problems.map((problem) => h("li", {text: problem}))));
      return;
    }
    submit({action: "edit", args}, "Sending the edited call");
  };

  form.addEventListener("submit", (event) => event.preventDefault());
  approve.addEventListener("click", () => submit({action: "approve"}, "Approving"));
  reject.addEventListener("click", () => {
    if (!reason.value.trim()) {
      showError(errors, new Error("Give a reason to reject: the agent is told it."));
      reason.focus();
      return;
    }
    submit({action: "reject", reason: reason.value.trim()}, "Rejecting");
  });
  edit.addEventListener("click", openEditor);
  sendEdit.addEventListener("click", sendEdited);
  return form;
}

/** The pending call: tool, arguments and the agent that asked. */
export function approvalSummary(pending) {
  return h("div", {class: "approval-summary"},
    h("p", {}, h("strong", {text: pending.tool}), ` requested by ${pending.requested_by || "?"}`),
    formatArgs(pending.args));
}
