// The approval inbox: every pending approval across threads, kept live by polling the
// LangGraph thread search (status "interrupted"); decisions go through /api/approve.
// A user's graph that interrupts with LangGraph's HumanInterrupt (a dict, or a list of one)
// is listed too, and answered with a HumanResponse resuming that thread's own graph.

import {
  ApiError, api, approvalForm, call, debug, formatArgs, h, setUpSignIn, showError, since,
  textOf,
} from "./common.js";

const POLL_MS = 2000;
const LIMIT = 200; // the newest threads waiting; each costs the cluster a state read per poll
const OUTCOME_WAIT_MS = 120000;

const $ = (id) => document.getElementById(id);
const alerts = $("alerts");
const pending = $("pending");
const decided = $("decided");
const status = $("inbox-status");
const items = new Map(); // interrupt id -> {node, thread, value, deciding}

debug.pausePolling = false;
const encode = encodeURIComponent;
const chatLink = (tid) => h("a", {href: `/ui/chat?thread=${encode(tid)}`, text: tid});

function conversation(messages) {
  const shown = messages.filter((m) => textOf(m.content));
  const asked = [...shown].reverse().find((m) => m.type === "human");
  return [
    asked ? h("p", {class: "asked"}, "Asked: ", h("q", {text: textOf(asked.content)})) : null,
    h("details", {class: "context"},
      h("summary", {text: `Conversation leading to it (${shown.length} ` +
        `message${shown.length === 1 ? "" : "s"})`}),
      h("ol", {}, shown.map((m) => h("li", {class: `msg ${m.type}`},
        h("strong", {text: m.type === "human" ? "User" : m.name || "assistant"}), ": ",
        h("span", {class: "text", text: textOf(m.content)}))))),
  ];
}

/** What an interrupt asks a human, or null: our approval of a sensitive tool, or a user's
 * graph's HumanInterrupt as {tool, args, requested_by, description, config, human: true}. */
function asked(value, thread) {
  if (value?.type === "approval") return value;
  const request = Array.isArray(value) ? (value.length === 1 ? value[0] : null) : value;
  const action = request?.action_request;
  if (typeof action?.action !== "string" || !request.config) return null;
  return {tool: action.action, args: action.args || {}, description: request.description,
    requested_by: thread.metadata?.graph_id, config: request.config, human: true};
}

/** A HumanInterrupt's form offers only the answers its config allows. */
function allowOnly(form, config) {
  const hide = (action, allowed) => {
    form.querySelector(`[data-action="${action}"]`).hidden = !allowed;
  };
  hide("approve", config.allow_accept);
  hide("edit", config.allow_edit);
  hide("reject", config.allow_respond || config.allow_ignore);
  return form;
}

function add(id, value, thread) {
  const headingId = `approval-${id}`;
  const item = {thread, value, deciding: false};
  const form = approvalForm(value, (decision) => decide(id, item, decision));
  item.node = h("li", {class: "item", "data-interrupt": id, "data-thread": thread.thread_id},
    h("article", {"aria-labelledby": headingId},
      h("h3", {id: headingId}, value.tool, h("span", {class: "muted",
        text: ` requested by ${value.requested_by || "?"}`})),
      h("p", {class: "meta"}, "Thread ", chatLink(thread.thread_id), " · waiting ",
        h("span", {class: "waited", "data-since": thread.updated_at,
          text: since(thread.updated_at)})),
      value.human && value.description ? h("p", {class: "asked", text: value.description}) : null,
      formatArgs(value.args), conversation(thread.values?.messages || []),
      value.human ? allowOnly(form, value.config) : form));
  items.set(id, item);
  pending.append(item.node);
}

/** A decision of the form as LangGraph's HumanResponse (``by`` counts only without auth). */
function humanResponse(value, decision) {
  const {action, args, reason, by} = decision;
  if (action === "approve") return {type: "accept", args: null, by};
  if (action === "edit") return {type: "edit", args: {action: value.tool, args}, by};
  return value.config.allow_respond ? {type: "response", args: reason, by}
    : {type: "ignore", args: null, by};
}

/** Resume a user's graph with the HumanResponse; what its run did once it is over. */
async function answerHuman(id, item, decision) {
  const tid = item.thread.thread_id;
  const answer = await call("POST", `/threads/${encode(tid)}/runs/wait`, {
    assistant_id: item.thread.metadata?.graph_id,
    command: {resume: {[id]: humanResponse(item.value, decision)}},
  }, []);
  return answer.body?.__error__
    ? `The run failed: ${answer.body.__error__.message || answer.body.__error__.error}`
    : outcomeOf(tid);
}

/** Move an item to "Decided", with what its run did (``outcome`` now, or once known). */
function settle(id, item, label, outcome) {
  items.delete(id);
  item.node.remove();
  const text = h("span", {class: "text", text: outcome || "waiting for the run to finish…"});
  const headingId = `decided-${id}`;
  const node = h("li", {class: "item decided", "data-interrupt": id, tabindex: "-1",
    "aria-labelledby": headingId},
  h("h3", {id: headingId}, `${item.value.tool}: ${label}`),
  h("p", {class: "meta"}, "Thread ", chatLink(item.thread.thread_id)),
  formatArgs(item.value.args),
  h("p", {class: "outcome"}, h("strong", {text: "Outcome: "}), text));
  decided.prepend(node);
  refreshCount();
  return {node, text};
}

async function decide(id, item, decision) {
  item.deciding = true;
  let outcome;
  try {
    outcome = await (item.value.human ? answerHuman : approve)(id, item, decision);
  } catch (error) {
    item.deciding = false;
    if (error.status === 409) {
      decidedElsewhere(id, item, "already decided elsewhere (your decision was not applied)");
      return;
    }
    throw error; // shown in the item's form
  }
  settle(id, item, label(decision), outcome).node.focus();
}

/** Decide one of our approvals through /api/approve; what its run did. */
async function approve(id, item, decision) {
  const answer = await call("POST", "/api/approve", {
    thread_id: item.thread.thread_id, interrupt_id: id, stream: false, ...decision,
  }, [202, 500]);
  const failure = answer.status === 500 && answer.body.error;
  if (answer.status === 500 && !failure) { // not the run's error: maybe not applied
    throw new ApiError(500, `The cluster failed: ${answer.body.detail || "no reason given"}`);
  }
  return answer.status === 202
    ? "The run continued and is waiting for another approval (listed above)."
    : failure ? `The run failed: ${failure.message || failure.error}` : answer.body.answer;
}

function label(decision) {
  const verb = {approve: "approved", reject: "rejected", edit: "edited and approved"};
  return `${verb[decision.action]} by ${decision.by}` +
    (decision.reason ? ` (${decision.reason})` : "");
}

function decidedElsewhere(id, item, label = "decided elsewhere") {
  const {text} = settle(id, item, label);
  outcomeOf(item.thread.thread_id).then((outcome) => (text.textContent = outcome));
}

/** What a thread's run did once it is no longer busy: its answer, error or next approval. */
async function outcomeOf(tid) {
  const deadline = Date.now() + OUTCOME_WAIT_MS;
  while (Date.now() < deadline) {
    try {
      const thread = await api("GET", `/threads/${encode(tid)}`);
      if (thread.status === "interrupted") return "Waiting for another approval.";
      if (thread.status === "error") {
        return `The run failed: ${thread.error?.message || thread.error?.error}`;
      }
      if (thread.status === "idle") {
        const messages = thread.values?.messages || [];
        return textOf(messages.at(-1)?.content) || "The run finished.";
      }
    } catch (error) {
      if (error.status === 404) return "The thread was deleted.";
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  return "Still running: open the thread to follow it.";
}

function refreshCount() {
  const count = items.size;
  $("empty").hidden = count > 0;
  document.title = `${count ? `(${count}) ` : ""}Approval inbox · Agent Cluster`;
  return count;
}

async function poll() {
  if (debug.pausePolling || document.hidden) return; // a hidden tab catches up when shown
  let threads;
  try {
    threads = await api("POST", "/threads/search", {status: "interrupted", limit: LIMIT});
  } catch (error) {
    showError(alerts, error);
    status.textContent = `Not up to date: the last refresh failed at ${clock()}.`;
    return;
  }
  showError(alerts, null);
  threads.sort((a, b) => Date.parse(a.updated_at) - Date.parse(b.updated_at));
  const seen = new Set();
  for (const thread of threads) {
    for (const interrupts of Object.values(thread.interrupts || {})) {
      for (const {id, value} of interrupts) {
        const question = asked(value, thread);
        if (!question) continue;
        seen.add(id);
        if (!items.has(id)) add(id, question, thread);
      }
    }
  }
  const complete = threads.length < LIMIT; // else a missing item may just be older
  for (const [id, item] of items) {
    if (complete && !seen.has(id) && !item.deciding) decidedElsewhere(id, item);
  }
  const count = refreshCount();
  const more = threads.length === LIMIT ? ` (the newest ${LIMIT} threads)` : "";
  status.textContent = `${count} waiting${more} · updated live, last at ${clock()}`;
}

const clock = () => new Date().toLocaleTimeString();

async function pollForever() {
  await poll();
  setTimeout(pollForever, POLL_MS);
}

setUpSignIn();
document.addEventListener("signin", () => {
  items.clear();
  pending.replaceChildren();
  poll();
});
document.addEventListener("visibilitychange", poll);
setInterval(() => {
  for (const span of pending.querySelectorAll(".waited")) {
    span.textContent = since(span.dataset.since);
  }
}, 1000);
pollForever();
