"""HTTP for the OCI distribution API: requests with a total deadline, the registry's auth flow.

Plain ``http.client`` (no dependency, so the light serving install has it): one connection
per request, each request run under :func:`~._bounded.run_bounded`, so DNS, connect,
headers, body and retries all fit one deadline, and a registry that accepts a connection but
never answers (or trickles) fails in bounded time.

Auth as registries specify it (distribution ``docs/spec/auth/token.md``, OCI
distribution-spec): a request goes out anonymously, or with what the last challenge asked
for; a ``401`` with ``WWW-Authenticate: Basic …`` is answered with the credentials, one with
``Bearer realm=…,service=…,scope=…`` by fetching a token from the realm (with the
credentials, or an identity token as an OAuth2 refresh token) for every scope asked for so
far, then the request is sent once more. A second ``401`` is the user's error: the message
names the registry and where the credentials came from, never their values.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import ssl
import threading
import time
from dataclasses import dataclass
from typing import IO, Callable, Mapping
from urllib.parse import urlencode, urljoin, urlparse

from ...errors import RemoteError
from ._bounded import DeadlineExceeded, run_bounded
from ._oci_auth import Credentials

__all__ = ["ConnectionFailed", "Response", "RegistryClient", "Unauthorized"]

Body = bytes | Callable[[], IO[bytes]] | None


class Unauthorized(RemoteError):
    """The registry refused (or asked for) credentials: 401 after the auth flow."""


class ConnectionFailed(RemoteError):
    """No answer at all (refused, reset, dropped): an idempotent request is tried again."""


@dataclass
class Response:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def error_code(self) -> str:
        """The OCI error code(s) of an error body (``{"errors": [{"code": …}]}``), or the status."""
        try:
            errors = json.loads(self.body)["errors"]
            # Codes only as the spec spells them: a registry's text never reaches the terminal raw.
            codes = [str(e.get("code")) for e in errors if isinstance(e, dict)][:3]
            codes = [c if _ERROR_CODE.fullmatch(c) else "?" for c in codes]
            return ", ".join(codes) or str(self.status)
        except (ValueError, KeyError, TypeError, AttributeError):
            return str(self.status)


_PRINTABLE_SCOPE = re.compile(r"[\w:/.,*@ -]{1,256}")
_ERROR_CODE = re.compile(r"[A-Z0-9_]{1,64}")
_CHALLENGE = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
                            for m in _CHALLENGE.finditer(rest)}


class RegistryClient:
    """Requests to one registry (``scheme://host[:port]``), authenticated as it asks."""

    ATTEMPTS = 3  # idempotent requests (GET, HEAD) on a connection failure or a 5xx
    MAX_REDIRECTS = 5
    MAX_ERROR_BODY = 64 << 10
    MAX_TOKEN_BYTES = 1 << 20

    def __init__(self, scheme: str, host: str, credentials: Callable[[], Credentials | None], *,
                 timeout: float, deadline: float, describe: str) -> None:
        self.scheme, self.host = scheme, host
        self.base = f"{scheme}://{host}"
        self._credentials_source = credentials
        self._credentials: Credentials | None = None
        self._looked_up = False
        self.timeout, self.deadline = timeout, deadline
        self.describe = describe
        self._lock = threading.Lock()
        self._auth: str | None = None  # the Authorization header value the registry last asked for
        self._scopes: list[str] = []

    # ------------------------------------------------------------------ credentials and tokens

    def credentials(self) -> Credentials | None:
        with self._lock:
            if not self._looked_up:
                self._credentials, self._looked_up = self._credentials_source(), True
            return self._credentials

    def _authenticate(self, challenge: str | None, budget: float) -> None:
        scheme, params = parse_challenge(challenge or "")
        creds = self.credentials()
        if scheme == "basic":
            if creds is None:
                raise Unauthorized(self._needs_credentials())
            pair = f"{creds.username}:{creds.secret}".encode()
            self._auth = "Basic " + base64.b64encode(pair).decode()
            return
        if scheme != "bearer" or not params.get("realm"):
            raise Unauthorized(f"registry {self.host} answered 401 without a challenge Kiln understands "
                               f"({scheme or 'none'}); it cannot be used with Kiln as configured.")
        with self._lock:
            for scope in (params.get("scope") or "").split(" "):
                if scope and scope not in self._scopes:
                    self._scopes.append(scope)
            scopes = list(self._scopes)
        self._auth = "Bearer " + self._token(params["realm"], params.get("service"), scopes, creds, budget)

    def _token(self, realm: str, service: str | None, scopes: list[str], creds: Credentials | None, budget: float) -> str:
        query = [("service", service)] if service else []
        query += [("scope", s) for s in scopes]
        headers: dict[str, str] = {}
        if creds is not None and creds.identity_token:
            form = urlencode([("grant_type", "refresh_token"), ("refresh_token", creds.secret),
                              ("client_id", "kiln"), *query]).encode()
            method, url, body = "POST", realm, form
            headers["content-type"] = "application/x-www-form-urlencoded"
        else:
            method, url, body = "GET", realm + ("&" if "?" in realm else "?") + urlencode(query), None
            if creds is not None:
                headers["authorization"] = "Basic " + base64.b64encode(f"{creds.username}:{creds.secret}".encode()).decode()
        r = self._send(method, url, headers, body, budget, self.MAX_TOKEN_BYTES)
        if r.status in (401, 403):
            raise Unauthorized(self._refused(creds, f"its token service {urlparse(realm).netloc} answered {r.status}"))
        if r.status != 200:
            raise RemoteError(f"the token service of registry {self.host} answered {r.status}: cannot authenticate.")
        try:
            answer = json.loads(r.body)
            token = answer.get("token") or answer.get("access_token")
            if not isinstance(token, str) or not token:
                raise ValueError
        except (ValueError, AttributeError):
            raise RemoteError(f"the token service of registry {self.host} answered without a token.") from None
        return token

    def _needs_credentials(self) -> str:
        return (f"registry {self.host} requires credentials (401 Unauthorized) and none were found for it: log in "
                "(docker login / skopeo login, which write the docker config), set a credential helper, or set "
                "KILN_OCI_USERNAME and KILN_OCI_PASSWORD.")

    def _refused(self, creds: Credentials | None, what: str) -> str:
        if creds is None:
            return self._needs_credentials()
        return (f"registry {self.host} refused the credentials of user {creds.username!r} from {creds.source} "
                f"(401 Unauthorized; {what}): check the user name and password or token, and that it may push "
                f"to / pull from {self.describe}.")

    # ------------------------------------------------------------------ requests

    def request(self, method: str, path: str, *, headers: Mapping[str, str] | None = None, body: Body = None,
                max_bytes: int = 1 << 20, budget: float | None = None, sink: Callable[[bytes], None] | None = None,
                ) -> Response:
        """One request (``path`` relative to the registry, or an absolute URL it gave), authenticated,
        redirects followed, at most ``max_bytes`` of body read (or streamed to ``sink``)."""
        budget = self.deadline if budget is None else budget
        start = time.monotonic()

        def left() -> float:
            return budget - (time.monotonic() - start)

        url = path if "://" in path else self.base + path
        tries = self.ATTEMPTS if method in ("GET", "HEAD") and sink is None else 1
        for attempt in range(tries):
            try:
                r = self._authorized(method, url, dict(headers or {}), body, left, max_bytes, sink)
            except ConnectionFailed:
                if attempt == tries - 1 or left() <= 0:
                    raise
                r = None
            if r is not None and (r.status < 500 or attempt == tries - 1):
                return r
            time.sleep(min(0.5 * (attempt + 1), max(left(), 0)))
        raise AssertionError("unreachable")

    def _own(self, url: str) -> bool:
        """Whether ``url`` is the registry itself (scheme and host): only it gets the registry's
        credentials. Upload locations, tag-list links and redirects may name other hosts
        (storage, CDNs), and those get none (as docker and containerd do)."""
        parsed = urlparse(url)
        return parsed.scheme == self.scheme and parsed.netloc.lower() == self.host.lower()

    def _authorized(self, method: str, url: str, headers: dict[str, str], body: Body, left: Callable[[], float],
                    max_bytes: int, sink: Callable[[bytes], None] | None) -> Response:
        for round_ in range(2):
            sent = dict(headers)
            if self._auth and self._own(url):
                sent["authorization"] = self._auth
            r, answered_by = self._follow(method, url, sent, body, left, max_bytes, sink)
            if r.status != 401:
                return r
            if not self._own(answered_by):
                # Another host's challenge (a redirect target, an upload location elsewhere) is not
                # the registry's: answering it would hand the registry's credentials to that host.
                raise Unauthorized(f"{urlparse(answered_by).netloc}, where registry {self.host} sent Kiln for "
                                   f"{self.describe}, answered 401; Kiln gives the registry's credentials to no other host.")
            if round_ == 1:
                _, challenge = parse_challenge(r.header("www-authenticate") or "")
                creds = self.credentials()
                if challenge.get("error") == "insufficient_scope" and creds is not None:
                    # Accepted, but not for this: a token without push (or pull) rights on the repository.
                    scope = challenge.get("scope") or ""
                    raise Unauthorized(
                        f"registry {self.host} accepted user {creds.username!r} (from {creds.source}) but not for "
                        f"{scope if _PRINTABLE_SCOPE.fullmatch(scope) else 'this request'} (insufficient_scope): "
                        f"that user may not {'push to' if method in ('PUT', 'POST', 'PATCH', 'DELETE') else 'pull from'} "
                        f"{self.describe}.")
                raise Unauthorized(self._refused(creds, f"asked for {url.split('?')[0].removeprefix(self.base)}"))
            self._authenticate(r.header("www-authenticate"), left())
        raise AssertionError("unreachable")

    def _follow(self, method: str, url: str, headers: dict[str, str], body: Body, left: Callable[[], float],
                max_bytes: int, sink: Callable[[bytes], None] | None) -> tuple[Response, str]:
        """The response, and the URL that gave it (after redirects)."""
        for _ in range(self.MAX_REDIRECTS + 1):
            r = self._send(method, url, headers, body, left(), max_bytes, sink, redirects=True)
            if r.status not in (301, 302, 303, 307, 308) or method not in ("GET", "HEAD"):
                return r, url
            target = urljoin(url, r.header("location") or "")
            if not self._own(target):  # storage redirects (and https -> http downgrades): no registry token
                headers = {k: v for k, v in headers.items() if k != "authorization"}
            url = target
        raise RemoteError(f"registry {self.host} redirected more than {self.MAX_REDIRECTS} times for {self.describe}.")

    def _send(self, method: str, url: str, headers: Mapping[str, str], body: Body, budget: float, max_bytes: int,
              sink: Callable[[bytes], None] | None = None, redirects: bool = False) -> Response:
        parsed = urlparse(url)

        def exchange() -> Response:
            cls = http.client.HTTPSConnection if parsed.scheme == "https" else http.client.HTTPConnection
            kwargs = {"context": ssl.create_default_context()} if parsed.scheme == "https" else {}
            conn = cls(parsed.netloc, timeout=self.timeout, **kwargs)  # type: ignore[arg-type]
            try:
                target = parsed.path + (f"?{parsed.query}" if parsed.query else "")
                payload = body() if callable(body) else body
                try:
                    sent = {"user-agent": "kiln", **headers}
                    if payload is None and method in ("PUT", "POST", "PATCH"):
                        sent.setdefault("content-length", "0")
                    conn.request(method, target, body=payload, headers=sent)
                    resp = conn.getresponse()
                finally:
                    if payload is not None and not isinstance(payload, bytes):
                        payload.close()
                head = {k.lower(): v for k, v in resp.getheaders()}
                ok = 200 <= resp.status < 300
                if method == "HEAD" or (redirects and resp.status in (301, 302, 303, 307, 308)):
                    return Response(resp.status, head, b"")
                if ok and sink is not None:
                    remaining = max_bytes + 1  # one byte more shows an object longer than declared
                    while remaining > 0:
                        chunk = resp.read(min(1 << 20, remaining))
                        if not chunk:
                            break
                        sink(chunk)
                        remaining -= len(chunk)
                    return Response(resp.status, head, b"")
                return Response(resp.status, head, resp.read((max_bytes if ok else self.MAX_ERROR_BODY) + 1))
            finally:
                conn.close()

        try:
            return run_bounded(exchange, max(budget, 0.0))
        except DeadlineExceeded:
            raise RemoteError(
                f"registry {self.host} took longer than {round(budget, 1):g} s to answer {method} for {self.describe} "
                "(a stalled or trickling server?). Allow longer with ?deadline=SECONDS in the remote URL or "
                "KILN_OCI_DEADLINE.") from None
        except (OSError, http.client.HTTPException) as e:
            if isinstance(e, ssl.SSLError) or "SSL" in type(e).__name__:
                raise RemoteError(f"TLS to registry {parsed.netloc} failed ({type(e).__name__}); for a registry "
                                  "without TLS add ?plain-http=true to the remote URL.") from None
            if isinstance(e, TimeoutError) or "timed out" in str(e):
                raise RemoteError(f"registry {parsed.netloc} did not answer within {self.timeout:g} s ({method} for "
                                  f"{self.describe}): is it up? (?timeout=SECONDS or KILN_OCI_TIMEOUT waits longer.)") from None
            raise ConnectionFailed(f"cannot reach registry {parsed.netloc} ({type(e).__name__}: {e}) for {self.describe}: "
                                   "is it up, and is the URL right?") from None
