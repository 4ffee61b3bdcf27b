"use strict";
// Publishing the browser's camera as a stream: getUserMedia, then WebRTC over WHIP (README, "Sources").

let camera = null, pc = null, whipLocation = null;

async function startCamera() {
  try {
    // Detail over frame rate: the model samples 1-2 frames a second and reads fine print.
    camera = await navigator.mediaDevices.getUserMedia({
      video: {width: {ideal: 1280}, height: {ideal: 720}, frameRate: {ideal: 15, max: 30}}, audio: false});
    const track = camera.getVideoTracks()[0];
    track.contentHint = "detail";
    $("preview").srcObject = camera;
    $("publish").disabled = false;
    $("pubstate").textContent = "camera on: " + track.label;
  } catch (err) { $("pubstate").textContent = "camera failed: " + err.message; }
}
function gathered(peer) {
  // WHIP without trickle ICE: the offer carries every candidate, so wait for gathering (at most 3 s).
  return new Promise((resolve) => {
    if (peer.iceGatheringState === "complete") return resolve();
    const done = () => { if (peer.iceGatheringState === "complete") resolve(); };
    peer.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, 3000);
  });
}
async function publish() {
  const name = $("name").value.trim();
  if (!camera || !name) return;
  $("publish").disabled = true;
  try { await startPublishing(name); } finally { $("publish").disabled = false; }
}
async function startPublishing(name) {
  await unpublish();
  pc = new RTCPeerConnection();
  const peer = pc;
  const track = camera.getVideoTracks()[0];
  peer.addTransceiver(track, {direction: "sendonly", streams: [camera]});
  peer.onconnectionstatechange = () => {
    $("pubstate").textContent = "publishing " + name + ": " + peer.connectionState;
    console.log("livesight publish: " + peer.connectionState);
  };
  await peer.setLocalDescription(await peer.createOffer());
  await gathered(peer);
  const resp = await fetch("/v1/whip/" + encodeURIComponent(name), {
    method: "POST", headers: {"Content-Type": "application/sdp", "Authorization": "Bearer " + token()},
    body: peer.localDescription.sdp});
  if (resp.status !== 201) {
    let why = resp.statusText;
    try { why = (await resp.json()).error; } catch (e) { /* not JSON */ }
    $("pubstate").textContent = `publishing failed (${resp.status}): ${why}`;
    peer.close(); if (pc === peer) pc = null; return;
  }
  whipLocation = resp.headers.get("Location");
  await peer.setRemoteDescription({type: "answer", sdp: await resp.text()});
  $("unpublish").disabled = false;
  $("pubstate").textContent = "publishing " + name + ": " + peer.connectionState;
  if (conn.ready) {
    setOptions([...new Set([...Array.from($("stream").options).map((o) => o.value), name])]);
    $("stream").value = name;
    render();
    send({type: "streams"});
  }
}
async function unpublish() {
  // Take the session first: a publish started meanwhile must not have its new connection closed here.
  const peer = pc, url = whipLocation;
  pc = null; whipLocation = null;
  $("unpublish").disabled = true;
  if (url) await fetch(url, {method: "DELETE", headers: {"Authorization": "Bearer " + token()}}).catch(() => {});
  if (peer) { peer.close(); $("pubstate").textContent = "stopped"; }
}
window.addEventListener("pagehide", () => {
  // keepalive lets the DELETE go out while the page unloads, so the stream ends at once.
  if (whipLocation) fetch(whipLocation, {method: "DELETE", keepalive: true,
                                         headers: {"Authorization": "Bearer " + token()}});
});
