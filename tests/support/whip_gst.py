"""A WHIP publisher built on GStreamer's webrtcbin, for interop tests: a third-party WebRTC stack (libnice
ICE, GStreamer's DTLS with its own RSA certificate) publishing to livesight over real HTTP.

Run it with Debian's interpreter (``/usr/bin/python3``): ``gi`` and the GStreamer WebRTC typelibs import only
there. It POSTs its offer (every ICE candidate included: WHIP without trickle) to the URL with the bearer
token, applies the answer, prints ``ANSWERED <Location>`` and then ``CONNECTED`` once the peer connection
is up, and publishes a moving test pattern until killed. Errors print ``ERROR <reason>`` and exit 1.

    /usr/bin/python3 tests/support/whip_gst.py http://127.0.0.1:8765/v1/whip/cam --token T [--loopback]

``--loopback`` gathers ICE candidates on 127.0.0.1 only (libnice leaves loopback out by default), to meet a
server whose ICE is kept on loopback too, on a machine with no other interface as well.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("Nice", "0.1")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC, Nice  # noqa: E402

PIPELINE = (
    "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=15/1 ! "
    "videoconvert ! vp8enc deadline=1 keyframe-max-dist=15 ! rtpvp8pay pt=96 ! "
    "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000 ! "
    "webrtcbin name=send bundle-policy=max-bundle"
)


class Publisher:
    def __init__(self, url: str, token: str, *, loopback: bool) -> None:
        self.url = url
        self.token = token
        self.loop = GLib.MainLoop()
        self.pipe = Gst.parse_launch(PIPELINE)
        self.webrtc = self.pipe.get_by_name("send")
        # Held for the pipeline's life: with GStreamer 1.22's gi, dropping this wrapper freed webrtcbin's ICE
        # object under it (GLib criticals, then no ICE at all), as if the wrapper held its only reference.
        self.ice = self.webrtc.get_property("ice-agent")
        if loopback:
            # With a local address given, libnice gathers host candidates on it alone.
            address = Nice.Address.new()
            address.set_from_string("127.0.0.1")
            self.ice.get_property("agent").add_local_address(address)
        self.webrtc.connect("on-negotiation-needed", self._on_negotiation_needed)
        self.webrtc.connect("notify::ice-gathering-state", self._on_gathering)
        self.webrtc.connect("notify::connection-state", self._on_connection)
        self.offered = False
        self.failed = False
        bus = self.pipe.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self._on_error)

    def run(self) -> int:
        transceiver = self.webrtc.emit("get-transceiver", 0)
        transceiver.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
        self.pipe.set_state(Gst.State.PLAYING)
        self.loop.run()
        self.pipe.set_state(Gst.State.NULL)
        return 1 if self.failed else 0

    def fail(self, why: str) -> None:
        print(f"ERROR {why}", flush=True)
        self.failed = True
        self.loop.quit()

    def _on_error(self, _bus: object, msg: Gst.Message) -> None:
        err, _debug = msg.parse_error()
        self.fail(f"pipeline: {err.message}")

    def _on_negotiation_needed(self, element: Gst.Element) -> None:
        promise = Gst.Promise.new_with_change_func(self._on_offer, element, None)
        element.emit("create-offer", None, promise)

    def _on_offer(self, promise: Gst.Promise, element: Gst.Element, _data: object) -> None:
        promise.wait()
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply is not None and reply.has_field("offer") else None
        if offer is None:
            self.fail(f"no offer: {reply.to_string() if reply is not None else 'no reply'}")
            return
        element.emit("set-local-description", offer, Gst.Promise.new())

    def _on_gathering(self, element: Gst.Element, _pspec: object) -> None:
        # WHIP without trickle ICE: the offer goes out once it holds every candidate.
        if element.get_property("ice-gathering-state") != GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            return
        if self.offered:
            return
        self.offered = True
        GLib.idle_add(self._post_offer)

    def _post_offer(self) -> bool:
        sdp = self.webrtc.get_property("local-description").sdp.as_text()
        req = urllib.request.Request(
            self.url,
            data=sdp.encode(),
            method="POST",
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {self.token}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=20) as resp:
                status, location, body = resp.status, resp.headers.get("Location", ""), resp.read().decode()
        except urllib.error.HTTPError as exc:
            self.fail(f"WHIP POST answered {exc.code}: {exc.read().decode(errors='replace')}")
            return False
        except OSError as exc:
            self.fail(f"WHIP POST failed: {exc}")
            return False
        if status != 201:
            self.fail(f"WHIP POST answered {status}")
            return False
        res, msg = GstSdp.SDPMessage.new_from_text(body)
        if res != GstSdp.SDPResult.OK:
            self.fail("the answer is not SDP")
            return False
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, msg)
        self.webrtc.emit("set-remote-description", answer, Gst.Promise.new())
        print(f"ANSWERED {location}", flush=True)
        return False

    def _on_connection(self, element: Gst.Element, _pspec: object) -> None:
        state = element.get_property("connection-state")
        if state == GstWebRTC.WebRTCPeerConnectionState.CONNECTED:
            print("CONNECTED", flush=True)
        elif state == GstWebRTC.WebRTCPeerConnectionState.FAILED:
            self.fail("the peer connection failed")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("url", help="the WHIP endpoint, http://HOST:PORT/v1/whip/NAME")
    p.add_argument("--token", required=True)
    p.add_argument("--loopback", action="store_true", help="ICE candidates on 127.0.0.1 only")
    args = p.parse_args()
    Gst.init(None)
    return Publisher(args.url, args.token, loopback=args.loopback).run()


if __name__ == "__main__":
    sys.exit(main())
