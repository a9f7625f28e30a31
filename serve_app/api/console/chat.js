// The chat page: threads, history, and each run watched live over SSE (the supervisor's
// routing, one lane per specialist, tool progress, the answer, pending approvals inline).

import {
  ApiError, RunFeed, api, approvalForm, approvalSummary, debug, h, setUpSignIn,
  showError, textOf,
} from "./common.js";

const MODES = ["updates", "custom", "messages-tuple"];
const WATCH_MS = 2000;

const $ = (id) => document.getElementById(id);
const transcript = $("transcript");
const alerts = $("alerts");
const connection = $("connection");
const composer = $("composer");
const message = $("message");

let threadId = null;
let lastRunId = null; // the newest run of the thread this page knows about
let feed = null; // the run being watched
let watcher = null; // polls for a decision made elsewhere while an approval is shown
let openApprovals = []; // approval cards of the current thread still waiting

debug.dropStreams = () => debug.feeds.forEach((f) => f.drop());

const encode = encodeURIComponent;
const brief = (text, size = 140) => (text.length > size ? `${text.slice(0, size)}…` : text);
const threadPath = (tid) => `/threads/${encode(tid)}`;

/** Milestones for screen readers ("Answer ready."); connection trouble shows on screen. */
function announce(text) {
  $("announce").textContent = text;
}

function scrollToEnd() {
  const nearEnd = window.innerHeight + window.scrollY >= document.body.scrollHeight - 200;
  if (nearEnd) window.scrollTo(0, document.body.scrollHeight);
}

// ---- one run, rendered live ----

class RunView {
  constructor(label) {
    this.lanes = new Map();
    this.usage = {input: 0, output: 0};
    this.runId = null;
    this.routing = h("ol", {class: "routing", "aria-label": "Supervisor's routing"});
    this.laneBox = h("div", {class: "lanes"});
    this.approvals = h("div", {class: "approvals"});
    this.answerText = h("div", {class: "text"});
    this.answer = h("section", {class: "answer", hidden: true, "aria-label": "Answer"},
      h("h3", {text: "Answer"}), this.answerText);
    this.facts = h("p", {class: "facts muted"});
    this.problem = h("div", {class: "run-error"});
    this.node = h("li", {class: "run"}, label ? h("p", {class: "run-label", text: label}) : null,
      this.routing, this.laneBox, this.approvals, this.answer, this.problem, this.facts);
  }

  lane(role) {
    let lane = this.lanes.get(role);
    if (!lane) {
      const tokens = h("div", {class: "tokens"});
      const state = h("span", {class: "lane-state", text: "working"});
      const progress = h("ul", {class: "progress", "aria-label": `${role}'s tool calls`});
      const node = h("section", {class: "lane", "data-role": role, "data-state": "working",
        "aria-label": `${role} lane`},
        h("h3", {}, role, " ", state), progress, tokens);
      lane = {node, tokens, state, progress};
      this.lanes.set(role, lane);
      this.laneBox.append(node);
    }
    return lane;
  }

  setLane(role, state) {
    const lane = this.lane(role);
    lane.state.textContent = state;
    lane.node.dataset.state = state;
  }

  handle(event, data) {
    if (event === "metadata") {
      this.runId = data.run_id;
      lastRunId = data.run_id;
      this.facts.textContent = `Run ${data.run_id.slice(0, 8)} · running`;
    } else if (event === "updates") {
      for (const [node, update] of Object.entries(data)) this.update(node, update);
    } else if (event === "custom") {
      this.custom(data);
    } else if (event === "messages") {
      const [chunk, meta] = data;
      if (meta?.langgraph_node !== "supervisor") return; // specialists' come as custom
      this.count(chunk.usage_metadata);
      const text = textOf(chunk.content);
      if (text) this.say(text);
    } else if (event === "token" || event === "progress") { // runs made by /api/chat
      if (data.role === "supervisor") this.say(data.text);
      else this.custom({...data, type: event});
    } else if (event === "approval") {
      this.approval(data);
    } else if (event === "answer") {
      if (this.answer.hidden) this.say(data.text);
    } else if (event === "error") {
      this.problem.replaceChildren(h("p", {class: "error",
        text: `The run failed: ${data.message || data.error}`}));
      announce("The run failed.");
    }
    scrollToEnd();
  }

  update(node, update) {
    if (node === "__interrupt__") {
      for (const interrupt of update) this.approval(interrupt);
    } else if (node === "supervisor" && update) {
      const steps = update.assignments || [];
      const step = update.steps ? `Step ${update.steps}: ` : "";
      if (steps.length) {
        this.routing.append(h("li", {}, step, "supervisor → ",
          steps.map((a, i) => [i ? ", " : "", h("strong", {text: a.worker})]),
          h("ul", {}, steps.map((a) => h("li", {class: "task", title: a.task,
            text: `${a.worker}: ${brief(a.task)}`})))));
        for (const a of steps) {
          const lane = this.lanes.get(a.worker); // called again: a divider in its lane
          if (lane && lane.node.dataset.state !== "working") lane.tokens.append(h("hr"));
          this.setLane(a.worker, "working");
        }
      } else {
        this.routing.append(h("li", {text: `${step}supervisor → finish`}));
      }
      for (const reply of update.messages || []) {
        if (!this.answerText.textContent) this.say(textOf(reply.content));
      }
    } else if (node === "worker" && update) {
      for (const msg of update.messages || []) {
        const meta = msg.response_metadata || {};
        this.count(msg.usage_metadata);
        if (meta.worker) this.setLane(meta.worker, meta.error ? "failed" : "done");
        if (meta.error) this.lane(meta.worker).tokens.append(h("p", {class: "error",
          text: textOf(msg.content)}));
      }
    }
  }

  custom(data) {
    if (!data?.role || data.role === "supervisor") return;  // a worker's lane, any role
    const lane = this.lane(data.role);
    if (data.type === "token") {
      lane.tokens.append(data.text);
    } else if (data.type === "progress") {
      lane.progress.append(h("li", {text: data.text}));
    }
  }

  async answerFromState() {
    try {
      const state = await api("GET", `${threadPath(threadId)}/state`);
      const last = state.values?.messages?.at(-1);
      if (last?.type === "ai" && textOf(last.content)) this.say(textOf(last.content));
    } catch {
      // the run's facts still say how it ended
    }
  }

  say(text) {
    this.answer.hidden = false;
    this.answerText.append(text);
  }

  count(usage) {
    if (!usage) return;
    this.usage.input += usage.input_tokens || 0;
    this.usage.output += usage.output_tokens || 0;
  }

  approval({id, value}) {
    if (!value || value.type !== "approval") return;
    const asker = value.requested_by;
    if (this.lanes.has(asker)) this.setLane(asker, "waiting for approval");
    const card = h("section", {class: "approval", "aria-label": `Approval: ${value.tool}`},
      h("h3", {text: "Waiting for your approval"}), approvalSummary(value));
    const form = approvalForm(value, (decision) => decideHere(id, decision, card));
    card.append(form, h("p", {class: "muted"},
      "Also in the ", h("a", {href: "/ui/inbox", text: "approval inbox"}), "."));
    this.approvals.append(card);
    openApprovals.push(card);
    announce(`Approval needed: ${value.tool}.`);
  }

  async finish(end) {
    const status = end?.data?.status || (end?.event === "error" ? "error" : "ended");
    let run = null;
    if (this.runId) {
      try {
        run = await api("GET", `${threadPath(threadId)}/runs/${encode(this.runId)}`);
      } catch {
        // the facts below are what the stream said
      }
    }
    const facts = [`Run ${(this.runId || "?").slice(0, 8)}`, run?.status || status];
    if (run?.created_at && run?.updated_at) {
      const seconds = (Date.parse(run.updated_at) - Date.parse(run.created_at)) / 1000;
      facts.push(`${seconds.toFixed(1)} s`);
    }
    const usage = run?.usage;
    const input = usage?.input_tokens ?? this.usage.input;
    const output = usage?.output_tokens ?? this.usage.output;
    if (input || output) facts.push(`${input + output} tokens (in ${input} · out ${output})`);
    const cost = run?.cost ?? usage?.cost;
    if (cost !== undefined && cost !== null) facts.push(`cost $${Number(cost).toFixed(4)}`);
    const trace = run?.trace_id ?? run?.metadata?.trace_id;
    if (trace) facts.push(`trace ${trace}`);
    this.facts.textContent = facts.join(" · ");
    const succeeded = (run?.status || status) === "success";
    for (const [role, lane] of this.lanes) {
      if (lane.node.dataset.state === "working") this.setLane(role, succeeded ? "done" : "stopped");
    }
    if (succeeded && this.answer.hidden && !this.approvals.childElementCount) {
      await this.answerFromState(); // a run streamed in modes that do not carry its answer
    }
    if (!this.answer.hidden) announce("Answer ready.");
  }
}

// ---- following runs ----

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").hidden = !busy;
}

/**
 * Watch one run in a new block of the transcript: start it (``path`` + ``body``) or join it
 * (``location``). Resolves once the cluster accepted it, and rejects if it did not; what
 * goes wrong later is shown on the page.
 */
function watchRun({path, body, location, label, before}) {
  const view = new RunView(label);
  const tid = threadId;
  let accepted = false;
  let accept;
  const opened = new Promise((resolve) => (accept = resolve));
  const runFeed = new RunFeed((event, data) => {
    if (!accepted) {
      accepted = true;
      accept();
      if (tid === threadId) {
        before?.();
        transcript.append(view.node);
      }
    }
    view.handle(event, data);
  }, (text) => (connection.textContent = text));
  feed = runFeed;
  setBusy(true);
  const done = (location ? runFeed.join(location) : runFeed.start(path, body))
    .then((end) => end && view.finish(end))
    .catch((error) => {
      if (!accepted) throw error;
      showError(alerts, error);
    })
    .finally(() => {
      if (feed !== runFeed) return;
      feed = null;
      setBusy(false);
      if (tid === threadId && openApprovals.length) startWatching();
      loadThreads();
    });
  return Promise.race([opened, done]);
}

/** Decide from the chat: the resumed run streams here like any other. */
async function decideHere(interruptId, decision, card) {
  stopWatching();
  const verb = {approve: "Approved", reject: "Rejected", edit: "Edited and approved"};
  const label = `${verb[decision.action]} by ${decision.by}` +
    (decision.reason ? `: ${decision.reason}` : "");
  try {
    await watchRun({
      path: `${threadPath(threadId)}/runs/stream`,
      body: {assistant_id: "supervisor", stream_mode: MODES,
        command: {resume: {[interruptId]: decision}}},
      label,
      before: () => settle(card, label),
    });
  } catch (error) {
    startWatching();
    if (error instanceof ApiError && error.status === 409) {
      throw new ApiError(409, "Already decided (maybe in another window or the inbox): " +
        "the outcome appears here as soon as its run starts.");
    }
    throw error;
  }
}

function settle(card, text) {
  card.querySelector("form")?.remove();
  card.querySelector("h3").textContent = text;
  card.classList.add("decided");
  openApprovals = openApprovals.filter((c) => c !== card);
}

/** While an approval waits, join the run that a decision made elsewhere starts. */
function startWatching() {
  stopWatching();
  const tid = threadId;
  watcher = setInterval(async () => {
    try {
      const [latest] = await api("GET", `${threadPath(tid)}/runs?limit=1`);
      if (tid !== threadId || feed || !latest || latest.run_id === lastRunId) return;
      stopWatching();
      lastRunId = latest.run_id;
      const cards = openApprovals;
      watchRun({
        location: `${threadPath(tid)}/runs/${encode(latest.run_id)}/stream`,
        label: "Continued elsewhere",
        before: () => cards.forEach((card) => settle(card, "Decided elsewhere")),
      }).catch((error) => showError(alerts, error));
    } catch {
      // a missed poll: the next one tries again
    }
  }, WATCH_MS);
}

function stopWatching() {
  clearInterval(watcher);
  watcher = null;
}

// ---- threads ----

function titleOf(thread) {
  const first = (thread.values?.messages || []).find((m) => m.type === "human");
  return first ? textOf(first.content) : "(empty thread)";
}

async function loadThreads() {
  try {
    const threads = await api("POST", "/threads/search", {limit: 50});
    $("thread-list").replaceChildren(...threads.map((thread) => {
      const current = thread.thread_id === threadId;
      return h("li", {}, h("button", {
        type: "button", class: "thread", "aria-current": current ? "true" : null,
        onclick: () => selectThread(thread.thread_id),
      }, h("span", {class: "title", text: titleOf(thread)}),
      h("span", {class: `badge ${thread.status}`, text: thread.status})));
    }));
  } catch (error) {
    showError(alerts, error);
  }
}

function renderMessage(msg) {
  const text = textOf(msg.content);
  if (msg.type === "human") {
    return h("li", {class: "msg user"}, h("h3", {text: "You"}), h("div", {class: "text", text}));
  }
  if (msg.type !== "ai" || !text) return null;
  if (msg.response_metadata?.worker) {  // a worker's answer: a built-in role or a project graph
    return h("li", {class: "msg report"}, h("details", {},
      h("summary", {text: `${msg.name}'s report`}), h("div", {class: "text", text})));
  }
  return h("li", {class: "msg answer"}, h("h3", {text: "Answer"}),
    h("div", {class: "text", text}));
}

async function selectThread(tid) {
  feed?.stop();
  feed = null;
  setBusy(false);
  stopWatching();
  openApprovals = [];
  threadId = tid;
  lastRunId = null;
  history.replaceState(null, "", `/ui/chat?thread=${encode(tid)}`);
  $("thread-label").textContent = `Thread ${tid}`;
  transcript.replaceChildren();
  showError(alerts, null);
  connection.textContent = "";
  loadThreads();
  let thread;
  let runs;
  try {
    [thread, runs] = await Promise.all([api("GET", threadPath(tid)),
      api("GET", `${threadPath(tid)}/runs?limit=1`)]);
  } catch (error) {
    showError(alerts, error);
    return;
  }
  if (tid !== threadId) return;
  transcript.append(...(thread.values?.messages || []).map(renderMessage).filter(Boolean));
  const latest = runs[0];
  lastRunId = latest?.run_id || null;
  if (latest && (latest.status === "pending" || latest.status === "running")) {
    watchRun({location: `${threadPath(tid)}/runs/${encode(latest.run_id)}/stream`,
      label: "Running now"}).catch((error) => showError(alerts, error));
  } else if (Object.keys(thread.interrupts || {}).length) {
    const view = new RunView("Waiting for approval");
    view.runId = lastRunId;
    transcript.append(view.node);
    view.handle("updates", {__interrupt__: Object.values(thread.interrupts).flat()});
    startWatching();
  } else if (thread.status === "error" && thread.error) {
    transcript.append(h("li", {class: "run"}, h("p", {class: "error",
      text: `The last run failed: ${thread.error.message || thread.error.error}`})));
  }
  window.scrollTo(0, document.body.scrollHeight);
}

async function newThread() {
  const thread = await api("POST", "/threads", {metadata: {created_by: "console"}});
  await selectThread(thread.thread_id);
  message.focus();
}

async function sendMessage() {
  const text = message.value.trim();
  if (!text || feed) return;
  showError(alerts, null);
  try {
    if (!threadId) await newThread();
  } catch (error) {
    showError(alerts, error);
    return;
  }
  stopWatching();
  const mine = renderMessage({type: "human", content: text});
  try {
    await watchRun({
      path: `${threadPath(threadId)}/runs/stream`,
      body: {assistant_id: "supervisor", stream_mode: MODES,
        input: {messages: [{role: "user", content: text}]}},
      before: () => transcript.append(mine),
    });
    message.value = "";
  } catch (error) {
    showError(alerts, error); // the message stays in the box, to send again
  }
}

// ---- wiring ----

setUpSignIn();
composer.addEventListener("submit", (event) => {
  event.preventDefault();
  sendMessage();
});
message.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    composer.requestSubmit();
  }
});
$("new-thread").addEventListener("click", () => newThread().catch((e) => showError(alerts, e)));
$("stop").addEventListener("click", () => {
  feed?.stop();
  connection.textContent =
    "Stopped watching: the run goes on in the cluster. Open the thread again to rejoin it.";
});
document.addEventListener("signin", () => (threadId ? selectThread(threadId) : loadThreads()));

const wanted = new URLSearchParams(location.search).get("thread");
if (wanted) selectThread(wanted);
else loadThreads();
