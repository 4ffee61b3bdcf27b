"""What an untrusted client may ingest: allow-lists for files and camera hosts.

Sources from the command line and the streams file are the operator's and are trusted; sources a client
adds at run time (the websocket's ``add_stream``) go through a :class:`SourcePolicy`::

    policy = SourcePolicy(allow_files=["/srv/videos"], allow_hosts=["10.0.0.0/8", "cam.local"])
    spec = policy.parse(f"{name}={url}")   # or policy.check(spec); raises SourceForbidden
    engine.add_stream(spec)

- **Files** (``--allow-files DIR...``): allowed when the file's real path (every symlink resolved) lies
  inside an allowed directory and is a readable regular file. No directories, no files. The spec that
  comes back names the real path, so a symlink swapped after the check changes nothing.
- **Cameras** (``--allow-hosts HOST|NETWORK...``): an entry is a host name (``cam.local``: that name is
  trusted, whatever it resolves to) or an IP address or network (``10.0.0.5``, ``10.0.0.0/8``, ``fd00::/8``;
  ``0.0.0.0/0`` and ``::/0`` allow every address). Any other host is resolved and *every* address it
  resolves to must lie in an allowed network; the camera reader then checks again before each connection
  and connects to the address it checked (the spec's ``guard``), so a DNS answer that changes later (DNS
  rebinding) cannot reach a forbidden address. No entries, no cameras.
- The demo scene is always allowed.

Errors are :class:`SourceForbidden` (a :class:`ConfigError`: retrying the same source does not help) and
say the same for a file that is missing, unreadable or outside the allowed directories, and for a host that
is not allowed or does not resolve. Nothing is opened or connected to before the check passes, so the
answer never depends on whether a port is open. Checking a host name that is not listed by name resolves
it (``getaddrinfo``, which blocks: call :meth:`check` off the event loop).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
from collections.abc import Callable, Iterable, Sequence

from errors import ConfigError
from stream.spec import SourceSpec, parse_source
from stream.url import parse_camera_url

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str], Sequence[str]]

_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")


class SourceForbidden(ConfigError):
    """A source outside the allow-lists (or one that cannot be told apart from such: a missing file, a
    host that does not resolve)."""


def resolve_host(host: str) -> list[str]:
    """Every address ``host`` resolves to (blocking); an empty list when it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):  # socket.gaierror is an OSError; an over-long label is a UnicodeError
        return []
    return sorted({str(info[4][0]) for info in infos})


class SourcePolicy:
    """The allow-lists for sources added at run time (see the module doc).

    Args:
        allow_files: directories whose files may be read (resolved once, here).
        allow_hosts: host names, IP addresses and networks (CIDR) cameras may be at.
        resolve: host name -> addresses (``getaddrinfo`` by default; inject one in tests).

    Raises :class:`ConfigError` for an entry that is not a directory, a host name or a network.
    """

    def __init__(
        self, allow_files: Iterable[str] = (), allow_hosts: Iterable[str] = (), *, resolve: Resolver = resolve_host
    ) -> None:
        self._dirs: list[str] = []
        for d in allow_files:
            real = os.path.realpath(d)
            if not os.path.isdir(real):
                raise ConfigError(f"--allow-files {d!r}: not a directory")
            self._dirs.append(real)
        self._names: set[str] = set()
        self._networks: list[IPNetwork] = []
        for entry in allow_hosts:
            try:
                self._networks.append(ipaddress.ip_network(entry.strip(), strict=False))
                continue
            except ValueError:
                pass
            name = entry.strip().lower().rstrip(".")
            if not _NAME.match(name):
                raise ConfigError(f"--allow-hosts {entry!r}: not a host name, an IP address or a network (CIDR)")
            self._names.add(name)
        self._resolve = resolve

    @property
    def allow_files(self) -> tuple[str, ...]:
        return tuple(self._dirs)

    @property
    def allow_hosts(self) -> tuple[str, ...]:
        return tuple(sorted(self._names)) + tuple(str(n) for n in self._networks)

    def parse(self, text: str) -> SourceSpec:
        """Parse an untrusted ``NAME=URL`` or ``URL`` and :meth:`check` it, without ever telling a missing
        file from a forbidden one."""
        return self.check(parse_source(text, check_file=False))

    def check(self, spec: SourceSpec) -> SourceSpec:
        """``spec`` if the policy allows it, as it must be opened (a file by its real path; a camera with
        a guard that checks its host again before each connection); raises :class:`SourceForbidden`."""
        if spec.kind == "demo":
            return spec
        if spec.kind == "file":
            return dataclasses.replace(spec, url=self.check_file(spec.url))
        if spec.kind == "rtsp":
            self.connect_url(spec.url)
            return dataclasses.replace(spec, guard=self.connect_url)
        raise SourceForbidden(f"source {spec.name!r}: {spec.kind} sources cannot be added here")

    def check_file(self, path: str) -> str:
        """The real path of ``path`` if it is a readable regular file inside an allowed directory."""
        real = os.path.realpath(path)
        inside = any(os.path.commonpath([real, d]) == d for d in self._dirs)
        if not (inside and os.path.isfile(real) and os.access(real, os.R_OK)):
            raise SourceForbidden(
                f"file {path!r} is not available: it does not exist, cannot be read, or is outside the "
                "directories files may be read from (--allow-files)"
            )
        return real

    def connect_url(self, url: str) -> str:
        """The camera URL to open now: ``url`` itself when its host is an allowed address or name, else
        ``url`` with its host replaced by one of the addresses it resolves to, all of which were just
        found allowed. Raises :class:`SourceForbidden`."""
        cam = parse_camera_url(url)  # specs hold accepted URLs; this cannot fail for them
        host = cam.host
        literal = _address(host)
        if literal is not None:
            if self._allowed(literal):
                return url
            raise self._forbidden(host)
        if host.lower().rstrip(".") in self._names:
            return url
        addresses = [a for a in (_address(r) for r in self._resolve(host)) if a is not None]
        if not addresses or not all(self._allowed(a) for a in addresses):
            raise self._forbidden(host)
        # Pin the connection to an address checked just now: FFmpeg resolving the name again could get
        # another answer. rtsps then presents the address, not the name, in TLS (FFmpeg does not verify
        # certificates by default).
        return cam.url(host=str(addresses[0]))

    def _allowed(self, address: IPAddress) -> bool:
        return any(address.version == n.version and address in n for n in self._networks)

    @staticmethod
    def _forbidden(host: str) -> SourceForbidden:
        return SourceForbidden(
            f"camera host {host!r} is not allowed: it is not in the hosts and networks cameras may be at "
            "(--allow-hosts), or it does not resolve"
        )


def _address(text: str) -> IPAddress | None:
    """``text`` as an IP address (IPv4-mapped IPv6 as the IPv4 it maps), or None if it is not one."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])  # a scope id ("fe80::1%eth0") is not the address
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
