"use strict";
// The connection and the conversation. In order: the connection (connect, reconnect, per-connection
// state, the poll); incoming messages (`handlers`, one function per message type: the only place server
// messages are read; watches.js adds its own); questions and how an answer's context is shown; the ask
// view; wiring of the controls.

const RECONNECT_FIRST_MS = 1000, RECONNECT_MAX_MS = 8000, POLL_MS = 2000;
const EVENTS_EVERY = 5;  // polls between timeline refreshes (captions are not pushed)
const MAX_SUBSCRIPTIONS = 64;  // the server's limit per connection
const REFUSED = 1008;  // the server's close code for a failed authentication: retrying would not help
const conn = {
  ws: null,          // the current socket; events of any older one are ignored
  ready: false,      // authenticated on the current socket
  wanted: false,     // the user asked to be connected: reconnect after a drop
  retry: null,       // the pending reconnect timer
  retryMs: RECONNECT_FIRST_MS,
  poll: null,        // the poll timer (`streams`, `watches`, pictures), running while ready
  polls: 0,
};
let nextId = 1;
let current = null;     // the question being answered: {id, text, el}
const subscribed = new Set();  // the streams whose pushes (status, watches, alerts) this connection hears
const sessions = {};  // one conversation per stream: follow-up questions see the earlier turns

// --- DOM helpers ---------------------------------------------------------------------------------
function line(cls, text) {
  const d = el("div", cls, text);
  $("log").appendChild(d); $("log").scrollTop = 1e9; return d;
}
function setStatus(text) { $("status").textContent = text; }
function showConnError(text) { $("connerr").textContent = text; $("connerr").hidden = !text; }
function updateControls() {
  $("send").disabled = !conn.ready || current !== null;
  $("cancel").disabled = !conn.ready || current === null;
  $("addwatch").disabled = !conn.ready;
}

// Plain words for the protocol's error codes (README, "Errors"); the server's message adds the details,
// except where the plain words already say all a user can act on.
const ERRORS = {
  no_video: "no video yet, try again in a moment",
  busy: "the server is busy, try again in a moment",
  forbidden: "not allowed with this token",
  unavailable: "not available right now",
  unauthorized: "not accepted",
  unknown_stream: "no such stream",
  too_large: "too long",
  bad_request: "the server did not understand the request",
  internal: "the server failed (see its log)",
  unknown_watch: "no such watch",
  too_many_watches: "too many watches",
};
const SAYS_ALL = new Set(["no_video", "busy"]);
function describeError(m) {
  const plain = Object.hasOwn(ERRORS, m.code) ? ERRORS[m.code] : "error " + m.code;
  return m.message && !SAYS_ALL.has(m.code) ? plain + ": " + m.message : plain;
}

// --- the connection ------------------------------------------------------------------------------
function connectNow() {
  // The user's own attempt: start the backoff afresh.
  conn.wanted = true;
  conn.retryMs = RECONNECT_FIRST_MS;
  connect();
}
function connect() {
  clearTimeout(conn.retry); conn.retry = null;
  if (conn.ws) { const old = conn.ws; conn.ws = null; old.close(); connectionEnded(); }
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/ws";
  const ws = new WebSocket(url);
  conn.ws = ws;
  setStatus("connecting…");
  ws.onopen = () => ws.send(JSON.stringify({type: "auth", token: token()}));
  ws.onmessage = (e) => { if (ws === conn.ws) handle(JSON.parse(e.data)); };
  ws.onclose = (e) => { if (ws === conn.ws) closed(e); };
}
function closed(e) {
  conn.ws = null;
  connectionEnded();
  if (e.code === REFUSED) {
    conn.wanted = false;
    setStatus("not connected");
    if ($("connerr").hidden) showConnError("refused: " + (e.reason || "unauthorized"));
  } else if (conn.wanted) {
    const wait = conn.retryMs;
    conn.retryMs = Math.min(2 * wait, RECONNECT_MAX_MS);
    const why = e.reason ? `${e.code}: ${e.reason}` : String(e.code);
    setStatus(`disconnected (${why}); reconnecting in ${Math.round(wait / 1000)} s`);
    conn.retry = setTimeout(connect, wait);
  } else {
    setStatus("not connected");
  }
}
function connectionEnded() {
  // Everything tied to one connection ends with it: the server forgets its questions and subscriptions.
  conn.ready = false;
  clearInterval(conn.poll); conn.poll = null;
  subscribed.clear();
  finishQuestion("interrupted", "interrupted: the connection was lost before the answer; ask again", "err");
  updateControls();
}
function send(msg) { if (conn.ws && conn.ws.readyState === WebSocket.OPEN) conn.ws.send(JSON.stringify(msg)); }
function poll() {
  send({type: "streams"});
  send({type: "watches", id: "page-watches"});
  if (++conn.polls % EVENTS_EVERY === 0) send({type: "events", id: "page-events", limit: TIMELINE_MAX});
  refreshThumbnails();
}

// --- incoming messages ---------------------------------------------------------------------------
const handlers = {
  ready(m) {
    conn.ready = true;
    conn.retryMs = RECONNECT_FIRST_MS;
    showConnError("");
    setStatus("connected");
    setOptions(m.streams);
    send({type: "events", id: "page-events", limit: TIMELINE_MAX});
    poll();
    clearInterval(conn.poll);
    conn.poll = setInterval(poll, POLL_MS);
    updateControls();
  },
  streams(m) {
    for (const s of m.streams) streams[s.name] = s;
    for (const name of Object.keys(streams)) if (!m.streams.some((s) => s.name === name)) delete streams[name];
    setOptions(m.streams.map((s) => s.name));
    render();
  },
  status(m) {
    if (m.state === "removed") { delete streams[m.stream]; subscribed.delete(m.stream); }
    else streams[m.stream] = {name: m.stream, ...m};
    console.log("livesight status: " + m.stream + " " + m.state);
    render();
  },
  unsubscribed() {},
  token(m) {
    if (!isCurrent(m.id)) return;
    current.el.textContent += m.text;
    current.el.dataset.tokens = String(Number(current.el.dataset.tokens || 0) + 1);
  },
  answer(m) {
    if (!isCurrent(m.id)) return;
    current.el.textContent = m.text;
    $("log").appendChild(contextLine(m));
    $("log").scrollTop = 1e9;
    console.log("livesight answer: " + m.text);
    finishQuestion("done");
  },
  cancelled(m) { if (isCurrent(m.id)) finishQuestion("stopped", "stopped", "meta"); },
  error(m) {
    const text = describeError(m);
    if (isCurrent(m.id)) finishQuestion("failed", text, "err");
    else if (m.code === "unauthorized" && !conn.ready) showConnError(text);
    else if (typeof m.id === "string" && /^(un)?watch-/.test(m.id)) watchError(text);
    else line("err", text);
  },
  ...watchHandlers,
};
function handle(m) {
  if (Object.hasOwn(handlers, m.type)) handlers[m.type](m);
  else console.log("livesight: ignored a message of type " + m.type);
}

// --- questions -----------------------------------------------------------------------------------
function isCurrent(id) { return current !== null && id === current.id; }
// A recall window's end as the server takes it: a number is stream seconds (a file), a clock time
// (13:30 or 13:30:15) is today's in the server's time zone, anything else an ISO 8601 time as typed.
function windowEnd(text) {
  if (/^\d+(\.\d+)?$/.test(text)) return Number(text);
  const m = /^(\d{1,2}):(\d{2})(?::(\d{2}))?$/.exec(text);
  if (m) {
    const d = new Date();
    return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())}T${pad2(m[1])}:${m[2]}:${m[3] || "00"}`;
  }
  return text;
}
// The ask options as the protocol takes them (README, "Ask"); null when the recall window is incomplete.
function askOptions() {
  const out = {detail: $("detail").checked};
  if ($("guided").value) out.guided = $("guided").value;
  const recall = $("recall").value;
  if (recall === "window") {
    const a = $("recall-from").value.trim(), b = $("recall-to").value.trim();
    if (!a || !b) return null;
    out.recall = {start: windowEnd(a), end: windowEnd(b)};
  } else {
    out.recall = recall;
  }
  return out;
}
function ask(e) {
  e.preventDefault();
  const text = $("question").value.trim(), stream = $("stream").value;
  if (!text || current) return;
  if (!conn.ready) { line("err", "not connected: connect first, then ask"); return; }
  if (!stream) { line("err", "no stream to ask about yet"); return; }
  const options = askOptions();
  if (options === null) { line("err", "recall window: give its start and its end"); return; }
  const id = "p" + nextId++;
  sessions[stream] = sessions[stream] || "page-" + Math.random().toString(36).slice(2);
  line("q", text);
  current = {id, text, el: line("a", "")};
  current.el.id = "answer-" + id;
  current.el.dataset.state = "answering";
  send({type: "ask", id, stream, question: text, session: sessions[stream], ...options});
  $("question").value = "";
  updateControls();
}
function finishQuestion(state, note, noteClass) {
  // state: done, stopped, failed or interrupted; `note` (optional) is logged under the answer.
  if (current === null) return;
  const q = current;
  current = null;
  q.el.dataset.state = state;
  q.el.classList.add(state);
  if (state === "done") q.el.dataset.done = "1";
  if (note) line(noteClass, note).id = "note-" + q.id;
  // One keypress asks a question that did not get its answer again.
  if (state === "failed" || state === "interrupted") $("question").value ||= q.text;
  updateControls();
}
function cancelQuestion() { if (current) send({type: "cancel", id: current.id}); }

// What an answer was given to see (README, "Ask": `answer.context`): how much, the span of video in
// context, the archived clips recalled for it, whether the newest frame was shown in detail, guided.
function contextLine(m) {
  const c = m.context, d = el("div", "meta ctx");
  d.id = "meta-" + m.id;
  d.append(`${c.frames} frames, ${c.tokens} tokens of context`);
  const span = el("span", "span", c.start === null ? "no video" :
    spanText(c.start, c.end, c.clock_start, c.clock_end));
  span.id = "span-" + m.id;
  Object.assign(span.dataset, {start: c.start, end: c.end, clockStart: c.clock_start || "",
                               clockEnd: c.clock_end || ""});
  d.append(": ", span);
  if (c.recalled && c.recalled.length) {
    const rec = el("span", "recalled");
    rec.id = "recalled-" + m.id;
    rec.dataset.count = String(c.recalled.length);
    rec.append(`recalled (${c.recall === "time" ? "by time" : "by content"}) `);
    c.recalled.forEach((r, i) => {
      const item = el("span", "rspan", `${spanText(r.start, r.end, r.clock_start, r.clock_end)} (${plural(r.frames, "frame")})`);
      Object.assign(item.dataset, {start: r.start, end: r.end});
      rec.append(i ? ", " : "", item);
    });
    d.append(" · ", rec);
  }
  const flags = [];
  if (c.detail) flags.push("newest frame in detail");
  if (c.guided) flags.push("guided: " + c.guided);
  if (c.turns) flags.push(`${plural(c.turns, "earlier turn")}`);
  flags.push(`first token ${Math.round(m.timing.ttft_ms)} ms`);
  const f = el("span", "flags", flags.join(" · "));
  f.id = "flags-" + m.id;
  Object.assign(d.dataset, {detail: c.detail ? "1" : "0", guided: c.guided || ""});
  d.append(" · ", f);
  return d;
}

// --- the ask view --------------------------------------------------------------------------------
function setOptions(names) {
  const sel = $("stream"), keep = sel.value;
  const have = Array.from(sel.options).map((o) => o.value);
  if (have.join("\n") !== names.join("\n")) {
    sel.replaceChildren(...names.map((n) => new Option(n, n)));
    if (names.includes(keep)) sel.value = keep;
  }
  setWatchOptions(names);
  followAll(names);
}
function followAll(names) {
  // Every listed stream's pushes: state changes, watch changes and alerts (memory figures come with the
  // `streams` poll). The server allows MAX_SUBSCRIPTIONS a connection.
  if (!conn.ready) return;
  for (const name of names) {
    if (subscribed.has(name) || subscribed.size >= MAX_SUBSCRIPTIONS) continue;
    send({type: "subscribe", stream: name});
    subscribed.add(name);
  }
}
function render() {
  renderStreams();
  const s = streams[$("stream").value];
  $("state").textContent = s ? s.state : "-";
  $("memory").textContent = s ? `${s.frames ?? 0} frames ingested, memory ${s.memory_frames ?? 0} frames / ` +
    `${s.memory_tokens ?? 0} tokens` + (s.error ? ` — ${s.error}` : "") : "";
}

// --- wiring --------------------------------------------------------------------------------------
$("login").onsubmit = (e) => { e.preventDefault(); connectNow(); };  // the Connect button, or Enter
$("camera").onclick = startCamera;
$("publish").onclick = publish;
$("unpublish").onclick = unpublish;
$("stream").onchange = render;
$("ask").onsubmit = ask;
$("cancel").onclick = cancelQuestion;
$("recall").onchange = () => { $("window").hidden = $("recall").value !== "window"; };
$("watchform").onsubmit = addWatch;
updateControls();
