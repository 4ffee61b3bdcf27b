"""A real RTSP server for tests and benchmarks: GStreamer's RTSP server on loopback.

Run it with Debian's interpreter (``/usr/bin/python3``): ``gi`` and GstRtspServer import only there, not
from the project's virtual environment. It prints ``READY <url>`` (credentials left out) once it listens,
then serves until killed.

    /usr/bin/python3 tests/support/rtsp_server.py --port 8554 [--user U --password P] [--width 1920 ...]

``--protocols udp`` plays a camera that streams over UDP only (it refuses RTP interleaved over the RTSP
TCP connection with 461 Unsupported Transport); ``tcp`` one that streams over TCP only.
"""

from __future__ import annotations

import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

PROTOCOLS = {
    "any": GstRtsp.RTSPLowerTrans.UDP | GstRtsp.RTSPLowerTrans.UDP_MCAST | GstRtsp.RTSPLowerTrans.TCP,
    "udp": GstRtsp.RTSPLowerTrans.UDP,
    "tcp": GstRtsp.RTSPLowerTrans.TCP,
}


def launch_line(args: argparse.Namespace) -> str:
    if args.file:
        # An H.264 MP4 passed through without re-encoding: a camera at near-zero server CPU.
        return f"( filesrc location={args.file} ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )"
    caps = f"video/x-raw,width={args.width},height={args.height},framerate={args.fps}/1"
    return (
        f"( videotestsrc is-live=true pattern={args.pattern} ! {caps} ! "
        f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={args.keyint} bitrate={args.bitrate} ! "
        "rtph264pay name=pay0 pt=96 config-interval=1 )"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mount", default="/cam")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--keyint", type=int, default=30, help="frames between keyframes")
    p.add_argument("--bitrate", type=int, default=1000, help="kbit/s")
    p.add_argument("--pattern", default="ball")
    p.add_argument("--file", help="serve this H.264 MP4 instead of a generated scene (played once)")
    p.add_argument("--protocols", choices=sorted(PROTOCOLS), default="any", help="lower transports allowed")
    args = p.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch_line(args))
    factory.set_shared(True)  # one pipeline for every client, as a camera has
    factory.set_protocols(PROTOCOLS[args.protocols])
    if args.user is not None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "user")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password or ""), token)
        server.set_auth(auth)
        factory.add_role_from_structure(
            Gst.Structure.new_from_string(
                "user, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
            )
        )
    server.get_mount_points().add_factory(args.mount, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 1
    print(f"READY rtsp://127.0.0.1:{args.port}{args.mount}", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
