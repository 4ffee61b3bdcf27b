"""Camera URLs read exactly as FFmpeg's RTSP client reads them, and their redaction.

What is shown, checked against the allow-lists and redacted must be what FFmpeg will connect to, with the
credentials it will send. FFmpeg (libavformat ``av_url_split`` and ``ff_rtsp_connect``, confirmed against
PyAV 18's FFmpeg 8 with a listening socket):

- the scheme is what precedes the first ``:``; up to two ``/`` follow;
- the *authority* ends at the first ``/``, ``?`` or ``#``: ``rtsp://alice:Pa/ss@cam/x`` connects to host
  ``alice``, port ``atoi("Pa")`` = 0, with no credentials;
- the *userinfo* is the authority up to its **last** ``@`` (an unencoded ``@`` in a password works);
- the credentials sent are the userinfo percent-decoded (``+`` stays ``+``) and split at the first
  ``:`` into user and password, so a ``%3A`` in the user name moves the split; at most 127 bytes of
  userinfo are kept (silently truncated beyond);
- the host is ``[v6]`` or what precedes the first ``:``; the port is ``atoi`` of what follows;
- path, query and fragment are sent to the camera as written.

:func:`parse_camera_url` accepts only URLs whose meaning is unambiguous: no ``@`` after the authority
(a password holding ``/``, ``?`` or ``#`` must percent-encode it), no ``%3A`` in the user name, a port of
digits only, a plain host name or IP address, no whitespace or control characters (they would reach the
RTSP request line), and FFmpeg's length limits. Its errors never quote the URL.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import unquote_plus, unquote_to_bytes

from errors import ConfigError

CAMERA_SCHEMES = ("rtsp", "rtsps")
#: FFmpeg copies the userinfo into a 128-byte buffer and host and path into 1024-byte ones.
MAX_USERINFO_BYTES = 127
MAX_URL_BYTES = 1023

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_HOSTNAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?$")
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")
#: Query or path parameter names whose values are secrets: any name containing one of these words
#: (``pw``, ``passwd``, ``api_key``, ``X-Amz-Signature``, ``authToken``, ``credentials``, ``usr`` ...).
SECRET_WORDS = ("pass", "pw", "secret", "token", "key", "auth", "sig", "cred", "session", "user", "usr", "login")
_PARAM_NAME = re.compile(r"[A-Za-z0-9_.%+\-]*=")
#: Where a parameter's value ends: in a path a "/" ends it too, in a query or fragment it does not.
_PATH_VALUE_END = frozenset("&;/?#'\"<> \t\r\n")
_QUERY_VALUE_END = frozenset("&;#'\"<> \t\r\n")
HIDDEN = "***"


@dataclass(frozen=True, slots=True)
class CameraUrl:
    """An accepted camera URL split the way FFmpeg splits it (see the module doc)."""

    scheme: str  # "rtsp" or "rtsps", lower case
    userinfo: str | None  # as written, None without an "@"
    host: str  # a host name or an IP address (IPv6 without its brackets)
    port: int | None
    rest: str  # path, query and fragment as written ("" or starting with "/", "?" or "#")

    @property
    def user(self) -> str | None:
        """The user name FFmpeg sends (percent-decoded); None without credentials."""
        return None if self.userinfo is None else _decode(self.userinfo).partition(":")[0]

    @property
    def password(self) -> str | None:
        """The password FFmpeg sends (percent-decoded); None without one (FFmpeg then sends no credentials)."""
        if self.userinfo is None:
            return None
        _, sep, password = _decode(self.userinfo).partition(":")
        return password if sep else None

    def hostport(self, host: str | None = None) -> str:
        h = self.host if host is None else host
        h = f"[{h}]" if ":" in h else h
        return h if self.port is None else f"{h}:{self.port}"

    def url(self, *, host: str | None = None) -> str:
        """The URL to give FFmpeg, optionally with another host (an address the host was resolved to)."""
        cred = "" if self.userinfo is None else f"{self.userinfo}@"
        return f"{self.scheme}://{cred}{self.hostport(host)}{self.rest}"

    def redacted(self) -> str:
        """Safe to show: no userinfo, secret-looking parameter values replaced by ``***``."""
        cred = f"{HIDDEN}@" if self.userinfo else ""
        return f"{self.scheme}://{cred}{self.hostport()}{redact_params(self.rest)}"

    def secrets(self) -> list[str]:
        """Every secret this URL holds, as written and as sent (for scrubbing messages that quote them)."""
        found = [s for s in (self.userinfo, self.user, self.password) if s]
        for start, end in _rest_spans(self.rest):
            found += [self.rest[start:end], unquote_plus(self.rest[start:end])]
        return sorted({s for s in found if s}, key=len, reverse=True)


def _decode(userinfo: str) -> str:
    """Percent-decoding as FFmpeg's ``ff_urldecode`` does it (bytes; ``+`` kept), as text: bytes that are
    not UTF-8 become surrogates, so encoding back with ``surrogateescape`` gives FFmpeg's exact bytes."""
    return unquote_to_bytes(userinfo).decode("utf-8", "surrogateescape")


def parse_camera_url(url: str) -> CameraUrl:
    """Split an ``rtsp://`` or ``rtsps://`` URL as FFmpeg will; :class:`ConfigError` (never quoting the URL)
    for anything FFmpeg would read differently from how it reads to a person, or not at all."""
    if len(url.encode("utf-8", "surrogatepass")) > MAX_URL_BYTES:
        raise ConfigError(f"the camera URL is longer than {MAX_URL_BYTES} bytes")
    if _BAD_CHARS.search(url):
        raise ConfigError("the camera URL holds a space or a control character: percent-encode it (a space is %20)")
    m = _SCHEME.match(url)
    if m is None or m.group(1).lower() not in CAMERA_SCHEMES:
        raise ConfigError("a camera URL starts with rtsp:// or rtsps://")
    scheme = m.group(1).lower()
    after = url[m.end() :]
    cut = next((i for i, c in enumerate(after) if c in "/?#"), len(after))
    authority, rest = after[:cut], after[cut:]
    if "@" in rest:
        raise ConfigError(
            "the camera URL is ambiguous: it has an '@' after the host, so FFmpeg would take what precedes the "
            "first '/', '?' or '#' as the host and send no credentials. In a user name or password, write "
            "'/' as %2F, '?' as %3F, '#' as %23 and '@' as %40"
        )
    userinfo: str | None = None
    if "@" in authority:
        userinfo, _, authority = authority.rpartition("@")
        if len(userinfo.encode("utf-8", "surrogatepass")) > MAX_USERINFO_BYTES:
            raise ConfigError(f"the camera URL's user name and password are longer than {MAX_USERINFO_BYTES} bytes")
        if ":" in _decode(userinfo.partition(":")[0]):
            raise ConfigError(
                "the camera URL's user name holds an encoded ':' (%3A): FFmpeg splits user and password at the "
                "first ':', so it would send a different user name"
            )
    host, port = _host_port(authority)
    return CameraUrl(scheme, userinfo, host, port, rest)


def _host_port(authority: str) -> tuple[str, int | None]:
    port_text: str | None = None
    if authority.startswith("["):
        inside, sep, after = authority[1:].partition("]")
        if not sep or (after and not after.startswith(":")):
            raise ConfigError("the camera URL's host is not a valid [IPv6] address")
        try:
            host = str(ipaddress.IPv6Address(inside))
        except ValueError:
            raise ConfigError("the camera URL's host is not a valid [IPv6] address") from None
        port_text = after[1:] if after else None
    else:
        host, sep, tail = authority.partition(":")
        port_text = tail if sep else None
        if not host:
            raise ConfigError("the camera URL has no host")
        if not _HOSTNAME.match(host):
            raise ConfigError("the camera URL's host is not a host name or an IP address")
    port: int | None = None
    if port_text is not None:
        # FFmpeg reads the port with atoi: "554x" would be 554 and "" would be 0. Digits only, 1-65535.
        if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigError("the camera URL has an invalid port (1-65535)")
        port = int(port_text)
    return host, port


def is_secret_name(name: str) -> bool:
    """Whether a parameter called ``name`` (percent- or plus-encoded or not) holds a secret."""
    key = unquote_plus(name).lower()
    return any(word in key for word in SECRET_WORDS)


def _secret_spans(text: str, stops: frozenset[str] = _PATH_VALUE_END) -> Iterator[tuple[int, int]]:
    """Where the values of secret-looking ``name=value`` pairs lie in ``text`` (start, end), in order.

    A value runs to the next character in ``stops`` (a separator, a quote or whitespace). Names are matched
    anywhere, not only after a separator, because some cameras put parameters in the path
    (``/user=admin_password=x_channel=1``): every ``=`` is looked at with the name that precedes it.
    """
    done = 0
    for m in _PARAM_NAME.finditer(text):
        if m.start() < done or not is_secret_name(m.group()[:-1]):
            continue
        end = m.end()
        while end < len(text) and text[end] not in stops:
            end += 1
        if end > m.end():  # an empty value hides nothing
            yield m.end(), end
            done = end


def _rest_spans(rest: str) -> Iterator[tuple[int, int]]:
    """:func:`_secret_spans` over a URL's path, query and fragment, each with its own separators."""
    cut = next((i for i, c in enumerate(rest) if c in "?#"), len(rest))
    yield from _secret_spans(rest[:cut])
    yield from ((cut + a, cut + b) for a, b in _secret_spans(rest[cut:], _QUERY_VALUE_END))


def _hide(text: str, spans: Iterator[tuple[int, int]]) -> str:
    out: list[str] = []
    i = 0
    for start, end in spans:
        out += [text[i:start], HIDDEN]
        i = end
    out.append(text[i:])
    return "".join(out)


def redact_params(rest: str) -> str:
    """A URL's path, query and fragment with the value of every secret-looking ``name=value`` hidden."""
    return _hide(rest, _rest_spans(rest))


def redact(url: str) -> str:
    """``url`` made safe to show: credentials removed, secret-looking parameter values hidden.

    File paths come back unchanged. A camera URL that :func:`parse_camera_url` refuses comes back as its
    scheme and ``***`` only: what looks like its host may be part of a password. Other URLs lose what
    FFmpeg would read as userinfo (the authority up to its last ``@``) and secret parameter values.
    """
    m = _SCHEME.match(url)
    if m is None or len(m.group(1)) == 1:  # a path (or C:\ on Windows)
        return url
    scheme = m.group(1).lower()
    if scheme == "file":
        return url
    if scheme in CAMERA_SCHEMES:
        try:
            return parse_camera_url(url).redacted()
        except ConfigError:
            return f"{scheme}://{HIDDEN}"
    after = url[m.end() :]
    cut = next((i for i, c in enumerate(after) if c in "/?#"), len(after))
    authority, rest = after[:cut], after[cut:]
    if "@" in rest or _BAD_CHARS.search(url):
        return f"{scheme}://{HIDDEN}"
    if "@" in authority:
        authority = f"{HIDDEN}@{authority.rpartition('@')[2]}"
    return f"{scheme}://{authority}{redact_params(rest)}"


_ANY_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^\s'\"<>]*@")


def scrub(text: str, url: str) -> str:
    """``text`` (an FFmpeg message, say) with nothing secret left: ``url`` shown redacted, its credentials
    and secret parameter values removed wherever they appear (as written or decoded), and the userinfo of
    any other URL (a redirect) removed too."""
    out = text.replace(url, redact(url))
    try:
        secrets = parse_camera_url(url).secrets()
    except ConfigError:
        secrets = []
    # The known secrets first, whole: a generic pattern could cut one in two and leave a piece behind.
    for secret in secrets:
        if len(secret) >= 4:
            out = out.replace(secret, HIDDEN)
        else:  # a short one only as a word of its own, or every message would lose its letters
            out = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", HIDDEN, out)
    out = _ANY_USERINFO.sub(rf"\1{HIDDEN}@", out)
    return _hide(out, _secret_spans(out))
