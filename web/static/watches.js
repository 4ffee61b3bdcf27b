"use strict";
// Watches and the timeline (README, "Watches and alerts"): a form that adds a watch (`watch`), the list
// of watches (`watches`, kept current by `watch_status` pushes and the poll), and the timeline: entries
// from `events`, then each `alert` and `alert_update` as it is pushed, with their snapshots.

const TIMELINE_MAX = 50;  // entries shown; older ones leave the page (and free their pictures)
const watches = new Map();  // watch id -> its info
let timeline = [];          // timeline entries, newest first

function addWatch(e) {
  e.preventDefault();
  const stream = $("watch-stream").value, condition = $("condition").value.trim();
  const every = Number($("every").value);
  if (!conn.ready) return watchError("not connected: connect first");
  if (!stream || !condition) return watchError("choose a stream and write a condition");
  if (!(every >= 0.5)) return watchError("check every 0.5 s or more");
  watchError("");
  send({type: "watch", id: "watch-" + nextId++, stream, condition, every_s: every,
        describe: $("describe").checked});
}
function removeWatch(id) { send({type: "unwatch", id: "unwatch-" + nextId++, watch: id}); }
function watchError(text) { $("watcherr").textContent = text; $("watcherr").hidden = !text; }

function setWatchOptions(names) {
  const sel = $("watch-stream"), keep = sel.value;
  if (Array.from(sel.options).map((o) => o.value).join("\n") !== names.join("\n")) {
    sel.replaceChildren(...names.map((n) => new Option(n, n)));
    if (names.includes(keep)) sel.value = keep;
  }
}

function renderWatches() {
  const list = [...watches.values()].sort((a, b) => a.id - b.id);
  $("watches").replaceChildren(...list.map((w) => {
    const li = el("li", "watch");
    li.dataset.watch = String(w.id);
    li.dataset.stream = w.stream;
    li.dataset.state = w.state;
    const text = el("div", "wtext");
    text.append(el("span", "badge wstate-" + w.state, w.state), " ", el("strong", "", w.condition),
                el("span", "meta", ` on ${w.stream}, every ${w.every_s} s`));
    const stats = [plural(w.evaluations, "check"), plural(w.alerts, "alert")];
    if (w.score !== null && w.score !== undefined) stats.unshift(`P(yes) ${w.score.toFixed(2)}`);
    if (w.dropped) stats.push(`${w.dropped} skipped`);
    if (w.error) stats.push(w.error);
    const detail = el("div", "meta", stats.join(" · "));
    const rm = el("button", "remove", "Remove");
    rm.type = "button";
    rm.setAttribute("aria-label", `Remove watch ${w.id} (${w.condition})`);
    rm.onclick = () => removeWatch(w.id);
    li.append(text, rm, detail);
    return li;
  }));
  $("nowatches").hidden = list.length > 0;
}

// --- the timeline ---------------------------------------------------------------------------------
function mergeEvents(entries) {
  const byId = new Map(timeline.map((e) => [e.id, e]));
  for (const e of entries) byId.set(e.id, {...byId.get(e.id), ...e});
  timeline = [...byId.values()].sort((a, b) => b.id - a.id).slice(0, TIMELINE_MAX);
  renderTimeline();
}
function renderTimeline() {
  const ol = $("timeline"), have = new Map();
  for (const li of ol.children) have.set(Number(li.dataset.event), li);
  const items = timeline.map((e) => {
    const li = have.get(e.id) || makeEntry(e);
    have.delete(e.id);
    fillEntry(li, e);
    return li;
  });
  for (const li of have.values()) freePicture(li.querySelector("img"));
  ol.replaceChildren(...items);
  $("noevents").hidden = timeline.length > 0;
}
function makeEntry(e) {
  const li = el("li", "event");
  li.dataset.event = String(e.id);
  const img = el("img");
  img.alt = `${e.stream}: the frame of ${e.kind} ${e.id}`;
  const body = el("div", "ebody");
  body.append(el("div", "ehead"), el("div", "etext"));
  li.append(img, body);
  if (e.snapshot) {
    fetchPicture(e.snapshot).then((p) => {
      if (p.url) { showPicture(img, p); li.classList.add("pictured"); } else { li.dataset.picture = p.code; }
    }).catch((err) => console.log("livesight snapshot: " + err));
  }
  return li;
}
function fillEntry(li, e) {
  li.dataset.kind = e.kind;
  li.dataset.stream = e.stream;
  const at = clockOf(e.time) || e.time;
  const what = e.kind === "alert" ? e.condition : "caption";
  const parts = [at, e.stream, what];
  if (e.score !== null && e.score !== undefined) parts.push(`P(yes) ${e.score.toFixed(2)}`);
  if (e.kind === "alert") parts.push(e.ended ? `ended ${clockOf(e.ended) || e.ended}` : "holds");
  li.querySelector(".ehead").textContent = parts.join(" · ");
  li.querySelector(".etext").textContent = e.text || "";
}

// --- messages (called from page.js's handlers) -------------------------------------------------------
const watchHandlers = {
  watching(m) {
    watches.set(m.watch.id, m.watch);
    $("condition").value = "";
    renderWatches();
  },
  unwatched(m) { watches.delete(m.watch); renderWatches(); },
  watches(m) {
    watches.clear();
    for (const w of m.watches) watches.set(w.id, w);
    renderWatches();
  },
  watch_status(m) {
    if (m.state === "removed") watches.delete(m.watch); else watches.set(m.watch, m.info);
    renderWatches();
  },
  events(m) { mergeEvents(m.events); },
  alert(m) {
    console.log(`livesight alert: ${m.stream} ${m.condition}`);
    mergeEvents([{id: m.event, kind: "alert", stream: m.stream, watch: m.watch, condition: m.condition,
                  time: m.time, stream_time: m.stream_time, score: m.score, snapshot: m.snapshot,
                  ended: null, text: null}]);
  },
  alert_update(m) {
    const known = timeline.find((e) => e.id === m.event);
    if (!known) return;  // older than what the page shows
    const change = {id: m.event, ended: m.ended, ended_stream_time: m.ended_stream_time};
    if (m.description !== null) change.text = m.description;
    mergeEvents([change]);
  },
};
