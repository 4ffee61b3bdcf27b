"use strict";
// Every stream the token may see, as a card: its newest frame (refreshed every POLL_MS), its state and
// counts, and its memory as a bar of tiers over time (what is in context, at which detail, and what the
// archive holds), all from the `streams` message's fields (README, "Streams").

const streams = {};     // name -> the latest info from `streams` and `status`
const cards = new Map();  // name -> {card, img, busy}

// The memory's tiers (README "Memory, archive and recall"): 0 the newest frames at native detail, 1 the
// 4-frame clips at 16 tokens a frame, 2.. older video re-merged to fewer tokens a frame.
function tierName(t) { return t.tier === 0 ? "native" : t.tier === 1 ? "clips" : "video"; }
function perFrame(x) { return (x >= 1 ? String(Math.round(x * 100) / 100) : "1/" + Math.round(1 / x)) + " tok/frame"; }

function renderStreams() {
  const names = Object.keys(streams);
  for (const [name, c] of cards) {
    if (!names.includes(name)) { freePicture(c.img); c.card.remove(); cards.delete(name); }
  }
  for (const name of names) {
    if (!cards.has(name)) { cards.set(name, makeCard(name)); refreshThumbnail(name); }
    fillCard(cards.get(name), streams[name]);
  }
  $("nostreams").hidden = names.length > 0;
}

function makeCard(name) {
  const card = el("article", "card");
  card.dataset.stream = name;
  const thumb = el("div", "thumb");
  const img = el("img");
  img.alt = `${name}: the newest frame`;
  const none = el("span", "nopic", "no picture yet");
  thumb.append(img, none);
  const head = el("div", "cardhead");
  const pick = el("button", "pick", "Ask");
  pick.type = "button";
  pick.setAttribute("aria-label", `Ask about ${name}`);
  pick.onclick = () => { $("stream").value = name; render(); $("question").focus(); };
  head.append(el("strong", "cname", name), el("span", "badge"), pick);
  const bar = el("div", "tiers");
  bar.setAttribute("role", "img");
  bar.append(el("div", "lane context"), el("div", "lane archive"));
  const axis = el("div", "axis meta");
  axis.append(el("span", "lo"), el("span", "hi"));
  card.append(thumb, head, el("div", "counts meta"), bar, axis, el("div", "legend meta"), el("div", "memsum meta"));
  $("cards").appendChild(card);
  return {card, img, busy: false};
}

function fillCard(c, s) {
  const q = (sel) => c.card.querySelector(sel);
  const badge = q(".badge");
  badge.textContent = s.state;
  badge.className = "badge state-" + s.state;
  c.card.dataset.state = s.state;
  const age = s.last_frame_age_s === null || s.last_frame_age_s === undefined ? "" :
    ` · newest ${s.last_frame_age_s < 10 ? s.last_frame_age_s.toFixed(1) : Math.round(s.last_frame_age_s)} s ago`;
  q(".counts").textContent = `${s.frames ?? 0} frames · ${s.dropped ?? 0} dropped${age}` +
    (s.error ? ` · ${s.error}` : "");
  drawTiers(q(".tiers"), q(".axis"), q(".legend"), q(".memsum"), s);
}

// The bar: one lane for what is in context, tier by tier over stream time, one for the archive. The
// axis runs from the oldest second either holds to the newest. Each segment carries its values as data
// attributes (tier, start, end, frames, tokens), the bar its axis (lo, hi).
function drawTiers(bar, axis, legend, summary, s) {
  const tiers = (s.memory_tiers || []).filter((t) => t.frames > 0 && t.span);
  const archived = s.archive && s.archive.span ? s.archive.span : null;
  const ends = tiers.flatMap((t) => t.span).concat(archived || []).concat(s.memory_span || []);
  const lo = ends.length ? Math.min(...ends) : 0, hi = ends.length ? Math.max(...ends) : 0;
  const width = hi > lo ? hi - lo : 1;
  bar.dataset.lo = String(lo);
  bar.dataset.hi = String(hi);
  const place = (seg, start, end) => {
    seg.dataset.start = String(start);
    seg.dataset.end = String(end);
    seg.style.left = `${((start - lo) / width) * 100}%`;
    seg.style.width = `${((end - start) / width) * 100}%`;
  };
  bar.querySelector(".context").replaceChildren(...tiers.map((t) => {
    const seg = el("div", `seg tier-${Math.min(t.tier, 5)}`);
    seg.dataset.tier = String(t.tier);
    seg.dataset.frames = String(t.frames);
    seg.dataset.tokens = String(t.tokens);
    seg.dataset.tokensPerFrame = String(t.tokens_per_frame);
    place(seg, t.span[0], t.span[1]);
    seg.title = `${tierName(t)} (tier ${t.tier}), ${perFrame(t.tokens_per_frame)}: ` +
      `${streamTime(t.span[0])}–${streamTime(t.span[1])}, ${t.frames} frames, ${t.tokens} tokens`;
    return seg;
  }));
  const lane = bar.querySelector(".archive");
  if (archived) {
    const seg = el("div", "seg archived");
    place(seg, archived[0], archived[1]);
    seg.title = `archived ${streamTime(archived[0])}–${streamTime(archived[1])}`;
    lane.replaceChildren(seg);
  } else {
    lane.replaceChildren();
  }
  lane.hidden = !s.archive;
  bar.setAttribute("aria-label", `${s.name}: memory, ${tiers.length} tiers in context` +
    (archived ? ", and the archive" : ""));
  const clock = s.memory_clock_span;
  const atLo = archived && archived[0] < (s.memory_span || [lo])[0];
  axis.querySelector(".lo").textContent = ends.length ?
    (clock && !atLo ? clockOf(clock[0]) : streamTime(lo)) : "";
  axis.querySelector(".hi").textContent = ends.length ? (clock ? clockOf(clock[1]) : streamTime(hi)) : "";
  const key = (cls, text) => {
    const item = el("span", "key");
    item.append(el("i", "swatch " + cls), text);
    return item;
  };
  legend.replaceChildren(...tiers.map((t) => key(`tier-${Math.min(t.tier, 5)}`,
    `${tierName(t)} ${perFrame(t.tokens_per_frame)}: ${plural(t.frames, "frame")}`)));
  if (archived) legend.append(key("archived", "archive"));
  const parts = [];
  if (s.memory_span) {
    const mc = s.memory_clock_span;
    parts.push(`in context ${spanText(s.memory_span[0], s.memory_span[1], mc && mc[0], mc && mc[1])}, ` +
      `${s.memory_frames} frames in ${s.memory_tokens} tokens`);
  } else {
    parts.push("nothing in context yet");
  }
  if (s.archive) {
    const a = s.archive, ac = a.clock_span;
    parts.push(a.span ? `archived ${spanText(a.span[0], a.span[1], ac && ac[0], ac && ac[1])}, ` +
      `${a.clips} clips, ${bytesText(a.bytes)}` : "archive empty");
    if (a.dropped) parts.push(`${a.dropped} clips not archived`);
    if (a.error) parts.push(`archive: ${a.error}`);
  }
  if (s.long_term) parts.push(`${s.long_term} older records`);
  summary.textContent = parts.join(" · ");
}

// Each card's newest frame, fetched with the token; one request per stream at a time, none while the
// page is not visible (a background tab costs the server nothing).
function refreshThumbnails() {
  if (document.visibilityState === "hidden") return;
  for (const name of cards.keys()) refreshThumbnail(name);
}
function refreshThumbnail(name) {
  const c = cards.get(name);
  if (!c || c.busy || !conn.ready) return;
  c.busy = true;
  fetchPicture(`/v1/streams/${encodeURIComponent(name)}/snapshot.jpg`).then((p) => {
    if (cards.get(name) !== c) { if (p.url) URL.revokeObjectURL(p.url); return; }
    c.card.classList.toggle("pictured", Boolean(p.url));
    if (!p.url) { c.card.dataset.picture = p.code; return; }
    c.card.dataset.picture = "ok";
    c.img.dataset.streamTime = p.headers.get("X-Livesight-Stream-Time") || "";
    showPicture(c.img, p);
  }).catch((err) => { c.card.dataset.picture = "failed"; console.log("livesight thumbnail: " + err); })
    .finally(() => { c.busy = false; });
}
