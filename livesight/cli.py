"""The ``livesight`` command line: ``serve``, and the client commands ``ask``, ``streams``, ``add``, ``remove``,
``status``, ``watch``, ``unwatch``, ``watches`` and ``events`` (:mod:`livesight.client_commands`).

This is the edge: the only place that reads argv and the environment. Everything below gets typed values.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import sys
from collections.abc import Mapping, Sequence
from typing import Literal

from errors import ConfigError, LivesightError
from models.registry import DEFAULT_MODEL, builtin_names

TOKEN_ENV = "LIVESIGHT_TOKEN"
DEFAULT_URL = "ws://127.0.0.1:8765/v1/ws"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livesight",
        description="A real-time streaming video assistant: live video in, streamed answers out over websockets.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser(
        "serve",
        help="ingest video sources and answer questions over websockets",
        description="Ingest video sources into a rolling visual memory and answer questions about "
        "them over the websocket API at /v1/ws (health check: GET /healthz).",
    )
    s.add_argument(
        "--source",
        action="append",
        metavar="SRC",
        help="NAME=URL or URL; URL is 'demo' (a generated scene), a video file path, or an rtsp:// or rtsps:// "
        "camera. Repeatable. Default: demo (unless --config lists streams)",
    )
    s.add_argument(
        "--transport",
        action="append",
        metavar="NAME=MODE",
        help="how camera NAME's video travels: tcp, udp or auto (TCP, then UDP if the camera refuses TCP; "
        "the default). Repeatable; not part of the URL, which FFmpeg sends to the camera as it is",
    )
    s.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file listing streams to start with ([[streams]] name, url, fps; adds to --source) and viewer "
        "tokens limited to named streams ([[viewers]] name, token_file or token_env, streams)",
    )
    s.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"Hugging Face model id or local directory (default {DEFAULT_MODEL}); built in, nothing "
        f"downloaded: demo (a small model trained on the demo scene: it answers about --source demo only) and, "
        f"with random weights and meaningless text, {', '.join(n for n in builtin_names() if n != 'demo')}",
    )
    s.add_argument("--fps", type=float, default=1.0, help="frames sampled per second of stream time (default 1)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8765, help="port for HTTP and websockets (default 8765)")
    s.add_argument(
        "--token-file",
        metavar="FILE",
        help=f"file whose first line is the admin token (default: ${TOKEN_ENV}, else generated and printed once)",
    )
    s.add_argument(
        "--token",
        help="the admin token itself (discouraged: every local user can read a command line; use --token-file or "
        f"${TOKEN_ENV})",
    )
    s.add_argument(
        "--server-name",
        action="append",
        metavar="NAME",
        help="a name clients reach this server by (its Host header); IP addresses and localhost always work. "
        "Repeatable",
    )
    s.add_argument("--max-streams", type=int, default=16, help="streams at once (default 16)")
    s.add_argument(
        "--max-answers",
        type=int,
        default=4,
        help="answers generated at once, side by side, their decode steps batched (default 4; 1: one at a time)",
    )
    s.add_argument(
        "--ended-ttl",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long a stream that ended (a publisher that left, a file that finished) stays listed (default 300)",
    )
    s.add_argument(
        "--allow-files",
        nargs="+",
        action="extend",
        default=[],
        metavar="DIR",
        help="directories whose video files add_stream may read (default: none; --source and --config always may)",
    )
    s.add_argument(
        "--allow-hosts",
        nargs="+",
        action="extend",
        default=[],
        metavar="HOST",
        help="camera hosts add_stream may connect to: names, addresses or networks such as 10.0.0.0/8 (default: "
        "none; --source and --config cameras are always used)",
    )
    s.add_argument(
        "--data",
        metavar="DIR",
        default=default_data_dir(),
        help="where the archive lives: every clip, conversation and event, in SQLite (default %(default)s)",
    )
    s.add_argument("--no-archive", action="store_true", help="keep nothing on disk (memory is lost on restart)")
    s.add_argument(
        "--retain",
        default="24h",
        metavar="AGE",
        help="how long archived video and conversations are kept: 90m, 24h, 7d (default 24h)",
    )
    s.add_argument("--retain-bytes", metavar="SIZE", help="archive size kept per stream: 500MB, 2GB (default: no cap)")
    s.add_argument(
        "--timezone", metavar="ZONE", help="IANA time zone for clock times, e.g. Europe/Berlin (default: the machine's)"
    )
    s.add_argument(
        "--recall-tokens",
        type=int,
        metavar="N",
        help="visual tokens of archived clips a question may recall (default: a quarter of the budget, at most 512)",
    )
    s.add_argument(
        "--webhook",
        action="append",
        metavar="URL",
        help="POST every alert (JSON: the websocket alert and alert_update messages) to this http(s) URL, with "
        "retries; repeatable (watches may name their own too)",
    )
    s.add_argument("--max-connections", type=int, default=256, help="websocket connections at once (default 256)")
    s.add_argument(
        "--max-connections-per-address",
        type=int,
        default=16,
        help="websocket connections at once from one client address (default 16)",
    )
    s.add_argument(
        "--metrics-public",
        action="store_true",
        help="serve the Prometheus metrics at /metrics without a token (default: any valid token; a viewer's "
        "scrape shows its own streams only). Everyone who can reach the port then sees every stream's name",
    )
    s.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    s.add_argument(
        "--torch-threads",
        type=int,
        metavar="N",
        help="torch's CPU threads (default: torch's choice, one per core); 1 when many cameras share a small "
        "CPU: idle torch threads spin while the cameras' readers need the cores (docs/benchmarks.md)",
    )
    s.add_argument(
        "--load-4bit",
        action="store_true",
        help="load the model's weights in 4 bits (CUDA; needs pip install 'livesight[bnb]')",
    )
    s.add_argument("--budget", type=int, help="in-context visual tokens per stream (default: the model's)")
    s.add_argument(
        "--fast",
        action="store_true",
        help="read files and the demo as fast as the model ingests instead of at real time (lossless: no frame "
        "is dropped)",
    )
    s.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run the engine as shards on Ray (pip install 'livesight[ray]'), this process serving the API and "
        "routing each stream to its shard: local (start Ray on this machine), auto (join the cluster this machine is "
        "part of, after `ray start`), or that cluster's head address HOST:PORT. Default: one process, no Ray",
    )
    s.add_argument(
        "--shards",
        type=int,
        metavar="N",
        help="engine shards with --ray, each a Ray actor with its own model holding one GPU (or one CPU when the "
        "cluster has no GPU) and a share of the streams (default: one per GPU in the cluster, else 1)",
    )
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    a = sub.add_parser(
        "ask",
        help="ask a running server a question and print the answer as it streams",
        description="Ask a running livesight server about a stream; the answer prints as it "
        "is generated, then a line with the context it used (on stderr).",
    )
    a.add_argument("question", help="the question")
    _client_options(a)
    a.add_argument("--stream", required=True, help="stream name")
    a.add_argument("--session", help="conversation id: earlier turns of it become part of the context")
    a.add_argument("--max-new-tokens", type=int, default=128, help="answer length limit in tokens (default 128)")
    a.add_argument(
        "--recall",
        default="auto",
        metavar="auto|off|START,END",
        help="archived clips to add: auto (from the question's time words or content; the default), off, or a "
        "window: two ISO 8601 times (a live stream) or two stream seconds (a file), comma-separated",
    )
    a.add_argument("--detail", action="store_true", help="show the model the newest frame at high resolution")
    a.add_argument("--json", action="store_true", help="print every protocol message as a JSON line")

    ls = sub.add_parser(
        "streams",
        help="list a running server's streams",
        description="List the streams of a running livesight server that the token may see: state, source, "
        "frames, drops, memory.",
    )
    _client_options(ls)
    ls.add_argument("--json", action="store_true", help="print the streams as a JSON array")

    ad = sub.add_parser(
        "add",
        help="add a stream to a running server (admin token)",
        description="Start ingesting a source on a running server, within its --allow-files and --allow-hosts.",
    )
    ad.add_argument("name", help="the new stream's name")
    ad.add_argument("source_url", metavar="URL", help="anything serve --source takes: demo, a file, an rtsp:// URL")
    _client_options(ad)

    rm = sub.add_parser(
        "remove", help="remove a stream from a running server (admin token)", description="Stop and forget a stream."
    )
    rm.add_argument("name", help="the stream's name")
    _client_options(rm)

    st = sub.add_parser(
        "status",
        help="print streams' status, and with --follow every change as it comes",
        description="Print the status of the named streams (default: all). With --follow, keep printing each "
        "state change as it happens, reconnecting (with backoff) when the connection drops.",
    )
    st.add_argument("names", nargs="*", metavar="NAME", help="streams to show (default: every stream)")
    st.add_argument("--follow", "-f", action="store_true", help="keep printing status changes until interrupted")
    st.add_argument("--json", action="store_true", help="print each status message as a JSON line")
    _client_options(st)
    w = sub.add_parser(
        "watch",
        help="watch a stream for a condition and print its alerts as they come (admin token)",
        description="Add a watch: the condition is asked of the stream's video as a yes/no question every "
        "--every seconds; print each alert (and its updates) until interrupted, then remove the watch (unless "
        "--keep).",
    )
    w.add_argument("condition", help='what to watch for, e.g. "a person is at the door" (at most 300 characters)')
    w.add_argument("--stream", required=True, help="stream name")
    w.add_argument("--every", type=float, default=5.0, metavar="SECONDS", help="seconds of video between evaluations")
    w.add_argument(
        "--min-duration", type=float, default=0.0, metavar="SECONDS", help="how long it must hold before alerting"
    )
    w.add_argument("--cooldown", type=float, default=60.0, metavar="SECONDS", help="no second alert within this")
    w.add_argument("--threshold", type=float, default=0.6, help="P(yes) at which the condition holds (default 0.6)")
    w.add_argument("--describe", action="store_true", help="a one-sentence description after each alert")
    w.add_argument("--webhook", metavar="URL", help="also POST this watch's alerts to URL")
    w.add_argument("--keep", action="store_true", help="leave the watch on the server when this command ends")
    w.add_argument("--json", action="store_true", help="print each alert message as a JSON line")
    _client_options(w)

    uw = sub.add_parser("unwatch", help="remove a watch (admin token)", description="Remove a watch by its id.")
    uw.add_argument("watch_id", type=int, metavar="ID", help="the watch's id (see livesight watches)")
    _client_options(uw)

    ws = sub.add_parser(
        "watches", help="list a running server's watches", description="List the watches the token may see."
    )
    ws.add_argument("--stream", help="only this stream's")
    ws.add_argument("--json", action="store_true", help="print the watches as a JSON array")
    _client_options(ws)

    ev = sub.add_parser(
        "events",
        help="list the timeline: alerts and captions, newest first",
        description="List stored events (alerts, captions), newest first.",
    )
    ev.add_argument("--stream", help="only this stream's")
    ev.add_argument("--watch", type=int, metavar="ID", help="only this watch's alerts")
    ev.add_argument("--since", metavar="WHEN", help="an ISO 8601 time or a duration before now: 90m, 1h, 7d")
    ev.add_argument("--until", metavar="WHEN", help="an ISO 8601 time or a duration before now")
    ev.add_argument("--text", help="full-text search over conditions, descriptions and captions")
    ev.add_argument("--limit", type=int, default=50, help="at most this many (default 50, at most 500)")
    ev.add_argument("--json", action="store_true", help="print each event as a JSON line")
    _client_options(ev)
    return parser


def _client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=DEFAULT_URL, help=f"websocket URL (default {DEFAULT_URL})")
    p.add_argument("--token", help=f"access token (default: ${TOKEN_ENV})")


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = os.environ if environ is None else environ
    try:
        if args.command == "serve":
            return _serve(args, env)
        return _client_command(args, env)
    except LivesightError as exc:
        print(f"livesight: error: {exc}", file=sys.stderr)
        return 2 if not exc.retryable else 1
    except KeyboardInterrupt:
        return 130


def _serve(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from livesight.config import load_serve_config
    from livesight.serve import serve

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # websockets logs every frame at debug level, the auth message and its token included.
    logging.getLogger("websockets").setLevel(max(logging.INFO, logging.getLogger().level))
    token = _admin_token(args, env)
    values: dict[str, object] = {
        "model": args.model,
        "fps": args.fps,
        "host": args.host,
        "port": args.port,
        "token": token,
        "device": args.device,
        "torch_threads": args.torch_threads,
        "budget": args.budget,
        "load_4bit": args.load_4bit,
        "lossless": args.fast,
        "server_names": args.server_name or [],
        "max_streams": args.max_streams,
        "max_active": args.max_answers,
        "ended_ttl_s": args.ended_ttl,
        "max_connections": args.max_connections,
        "max_connections_per_address": args.max_connections_per_address,
        "allow_files": args.allow_files,
        "allow_hosts": args.allow_hosts,
        "data_dir": None if args.no_archive else args.data,
        "retain_s": parse_duration(args.retain, "--retain"),
        "retain_bytes": args.retain_bytes,
        "timezone": args.timezone,
        "recall_tokens": args.recall_tokens,
        "metrics_public": args.metrics_public,
        "ray": args.ray,
        "shards": args.shards,
        "webhooks": list(args.webhook or []),
    }
    sources: list[object] = []
    if args.config:
        from livesight.config_file import load_config_file

        file = load_config_file(args.config, env)
        sources.extend(file.streams)
        values["viewers"] = file.viewers
        values["watches"] = file.watches
        values["captions"] = file.captions
        values["webhooks"] = [*file.webhooks, *(args.webhook or [])]
    sources.extend(args.source or [])
    if args.transport:
        from stream.spec import SourceSpec, apply_transports, parse_source

        specs = [s if isinstance(s, SourceSpec) else parse_source(str(s)) for s in sources]
        sources = list(apply_transports(specs, args.transport))
    if sources:
        values["sources"] = sources
    cfg = load_serve_config(values)
    asyncio.run(serve(cfg))
    return 0


def _recall_option(text: str) -> Literal["auto", "off"] | tuple[str, str] | tuple[float, float]:
    """``auto``, ``off``, or ``START,END`` as two ISO 8601 times or two numbers (stream seconds)."""
    if text == "auto":
        return "auto"
    if text == "off":
        return "off"
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2:
        raise ConfigError(f"--recall {text!r}: auto, off, or START,END")
    try:
        return float(parts[0]), float(parts[1])
    except ValueError:
        return parts[0], parts[1]


def default_data_dir() -> str:
    """``$XDG_DATA_HOME/livesight``, or ``~/.local/share/livesight``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "livesight")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str, option: str) -> float:
    """``90s``, ``30m``, ``24h``, ``7d``, ``2w`` or plain seconds, as seconds."""
    t = text.strip().lower()
    unit = _UNITS.get(t[-1:])
    number = t[:-1] if unit else t
    try:
        value = float(number) * (unit or 1)
    except ValueError:
        raise ConfigError(f"{option} {text!r}: give a number with s, m, h, d or w, e.g. 24h") from None
    if not value > 0:
        raise ConfigError(f"{option} {text!r}: must be more than zero")
    return value


def _admin_token(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    """The admin token: from --token-file, --token (with a warning), $LIVESIGHT_TOKEN, or generated."""
    if args.token_file and args.token:
        raise ConfigError("give --token-file or --token, not both")
    if args.token_file:
        from livesight.config_file import read_token

        problems: list[str] = []
        token = read_token(args.token_file, None, env, problems, "--token-file")
        if token is None:
            raise ConfigError("; ".join(problems))
        return token
    if args.token:
        print(
            f"livesight: warning: a token on the command line can be read by every local user (ps); "
            f"use --token-file or {TOKEN_ENV}",
            file=sys.stderr,
            flush=True,
        )
        return str(args.token)
    token = env.get(TOKEN_ENV)
    if token:
        return token
    token = secrets.token_urlsafe(24)
    print(
        f"livesight: admin token (generated; set --token-file or {TOKEN_ENV} to choose one): {token}",
        file=sys.stderr,
        flush=True,
    )
    return token


def _client_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``ask``, ``streams``, ``add``, ``remove``, ``status``: a websocket client of a running server."""
    from livesight import client_commands as cmd

    token = args.token or env.get(TOKEN_ENV)
    if not token:
        print(f"livesight: error: no token: pass --token or set {TOKEN_ENV}", file=sys.stderr)
        return 2
    url = args.url
    if args.command == "ask":
        run = cmd.ask(
            url,
            token,
            args.stream,
            args.question,
            session=args.session,
            max_new_tokens=args.max_new_tokens,
            raw=args.json,
            recall=_recall_option(args.recall),
            detail=args.detail,
        )
    elif args.command == "streams":
        run = cmd.streams(url, token, raw=args.json)
    elif args.command == "add":
        run = cmd.add(url, token, args.name, args.source_url)
    elif args.command == "remove":
        run = cmd.remove(url, token, args.name)
    elif args.command == "watch":
        run = cmd.watch(
            url,
            token,
            args.stream,
            args.condition,
            every_s=args.every,
            min_duration_s=args.min_duration,
            cooldown_s=args.cooldown,
            threshold=args.threshold,
            describe=args.describe,
            webhook=args.webhook,
            keep=args.keep,
            raw=args.json,
        )
    elif args.command == "unwatch":
        run = cmd.unwatch(url, token, args.watch_id)
    elif args.command == "watches":
        run = cmd.watches(url, token, args.stream, raw=args.json)
    elif args.command == "events":
        run = cmd.events(
            url,
            token,
            stream=args.stream,
            watch=args.watch,
            since=args.since,
            until=args.until,
            text=args.text,
            limit=args.limit,
            raw=args.json,
        )
    else:
        run = cmd.status(url, token, args.names, follow=args.follow, raw=args.json)
    return asyncio.run(run)


if __name__ == "__main__":
    sys.exit(main())
