"use strict";
// Helpers every part of the page uses: DOM, the token, time formatting, and pictures fetched with the
// bearer token. Plain browser APIs only: the page is served by livesight itself and loads nothing else.
// The page's scripts share one global scope; load order: common, streams, watches, publish, page.
const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
function token() { return $("token").value.trim(); }

// --- time -----------------------------------------------------------------------------------------
// Clock times are shown as the server wrote them (its --timezone), not converted to the browser's zone.
function clockOf(iso) { return typeof iso === "string" && iso.length >= 19 ? iso.slice(11, 19) : null; }
function pad2(n) { return String(n).padStart(2, "0"); }
// Stream seconds as m:ss or h:mm:ss, with tenths when the time has them (0:39.5).
function streamTime(s) {
  if (typeof s !== "number" || !isFinite(s)) return "?";
  const whole = Math.floor(s), tenths = Math.round((s - whole) * 10);
  const h = Math.floor(whole / 3600), m = Math.floor((whole % 3600) / 60), sec = whole % 60;
  const base = h > 0 ? `${h}:${pad2(m)}:${pad2(sec)}` : `${m}:${pad2(sec)}`;
  return tenths > 0 && tenths < 10 ? `${base}.${tenths}` : base;
}
// A span as clock times when the server gave them (live streams), else as stream times (files); a span
// of one moment (a one-frame clip) as that moment.
function spanText(start, end, clockStart, clockEnd) {
  const a = clockOf(clockStart), b = clockOf(clockEnd);
  const [from, to] = a && b ? [a, b] : [streamTime(start), streamTime(end)];
  return from === to ? from : `${from}–${to}`;
}
function plural(n, word) { return `${n} ${word}${n === 1 ? "" : "s"}`; }
function bytesText(n) {
  if (n >= 1e9) return (n / 1e9).toFixed(1) + " GB";
  if (n >= 1e6) return (n / 1e6).toFixed(1) + " MB";
  if (n >= 1e3) return Math.round(n / 1e3) + " kB";
  return n + " B";
}

// --- pictures -------------------------------------------------------------------------------------
// A JPEG the server serves behind the token (a stream's newest frame, an alert's snapshot), fetched with
// the Authorization header: the token never goes into a URL. Resolves to {url (a blob: URL the caller
// revokes), bytes, headers}, or {status, code} when the server has no picture.
async function fetchPicture(path) {
  const resp = await fetch(path, {headers: {"Authorization": "Bearer " + token()}, cache: "no-store"});
  if (!resp.ok) {
    let code = String(resp.status);
    try { code = (await resp.json()).error.code || code; } catch (e) { /* not JSON */ }
    return {status: resp.status, code};
  }
  const blob = await resp.blob();
  return {url: URL.createObjectURL(blob), bytes: blob.size, headers: resp.headers};
}
// Show `picture` in `img`, freeing the blob URL it showed before once the new one is drawn.
function showPicture(img, picture) {
  const old = img.dataset.blob;
  img.dataset.blob = picture.url;
  img.dataset.bytes = String(picture.bytes);
  img.onload = () => { if (old) URL.revokeObjectURL(old); img.dataset.drawn = "1"; };
  img.onerror = () => { if (old) URL.revokeObjectURL(old); img.dataset.drawn = "0"; };
  img.src = picture.url;
}
function freePicture(img) {
  if (img && img.dataset.blob) { URL.revokeObjectURL(img.dataset.blob); delete img.dataset.blob; }
}
