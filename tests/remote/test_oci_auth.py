"""Registry authentication of OCI remotes, against a real registry (distribution 2.8 on loopback).

Two registries, one per auth variant, each for the module:

* htpasswd (HTTP Basic): a bcrypt htpasswd file; Kiln finds credentials in KILN_OCI_USERNAME /
  KILN_OCI_PASSWORD, in the docker config (``auths`` by host and by URL, ``credHelpers``,
  ``credsStore``; the helpers are real executables on PATH speaking the
  docker-credential-helpers protocol), or nowhere, and says so.
* token (Bearer): the registry verifies JWTs itself (its ``rootcertbundle``); the token
  service it points at is :class:`StandInTokenServer`, a stand-in for docker/auth, Harbor or a
  cloud registry's token endpoint, none of which can run here.

Every push is checked by a fetch into a wiped store; every failure by its exit status (2), its
single ``kiln: error:`` line, and the password appearing nowhere in what Kiln printed.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import random
import stat
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, urlparse

import pytest

from tests.remote.conftest import kiln_remote, store_put, tree, write_tree
from tests.remote.oci_registry import Registry, bcrypt_hash, needs_registry, start_registry

pytestmark = needs_registry

USER = "alice"
PASSWORD = "Kiln-s3cret-Pw-7f3a9"  # distinctive: that it never appears in output means something
WRONG = "Wrong-pw-Kiln-51c2e8"
REFRESH = "Kiln-refresh-tok-0d94be"  # an identity token (OAuth2 refresh token) the stand-in token service knows


# --------------------------------------------------------------------------- helpers


def small_artifact(tmp_path: Path, model: Path, seed: int, batch_size: int = 1) -> tuple[str, dict[str, bytes]]:
    rng = random.Random(seed)
    files = {
        "engine/model.pt2": rng.randbytes(48 << 10),
        "config.json": json.dumps({"seed": seed}).encode(),
        "tokenizer/tokenizer.json": b'{"version": "1.0"}',
    }
    return store_put(write_tree(tmp_path / f"art-{seed}", files), model, batch_size), files


def one_line_error(r: Any) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kiln: error: "), r.stderr
    return lines[0]


def no_secret(r: Any, *secrets: str) -> None:
    for s in secrets:
        for shown in (s, base64.b64encode(f"{USER}:{s}".encode()).decode()):
            assert shown not in r.stdout and shown not in r.stderr, "a credential was printed"


def round_trip(url: str, key: str, files: dict[str, bytes], tmp_path: Path, env: dict[str, str] | None = None) -> None:
    """Push from this store, fetch --key into a wiped one: the same bytes come back."""
    pushed = kiln_remote(url, "push", "--key", key, "--json", env=env)
    assert pushed.returncode == 0, pushed.stderr
    assert [p["key"] for p in json.loads(pushed.stdout)] == [key]
    no_secret(pushed, PASSWORD)
    dest = tmp_path / f"dest-{uuid.uuid4().hex[:6]}"
    fetched = kiln_remote(url, "fetch", "--key", key, "--dest", str(dest),
                          env={**(env or {}), "KILN_HOME": str(tmp_path / f"wiped-{uuid.uuid4().hex[:6]}")})
    assert fetched.returncode == 0, fetched.stderr
    no_secret(fetched, PASSWORD)
    assert tree(dest) == files


def write_docker_config(config: dict[str, Any]) -> Path:
    path = Path(os.environ["DOCKER_CONFIG"]) / "config.json"  # isolated per test by tests/conftest.py
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))
    return path


def b64_auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def credential_helper(bindir: Path, name: str, host: str, password: str = PASSWORD) -> Path:
    """A real executable ``docker-credential-NAME`` (docker-credential-helpers protocol: ``get``
    reads the server on stdin, answers JSON ``{ServerURL, Username, Secret}``, or exits 1 with
    "credentials not found in native keychain"). Each call is logged to NAME.log."""
    bindir.mkdir(parents=True, exist_ok=True)
    log = bindir / f"{name}.log"
    script = bindir / f"docker-credential-{name}"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        "server = sys.stdin.read().strip()\n"
        f"open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + ' ' + server + '\\n')\n"
        f"if sys.argv[1:] == ['get'] and server == {host!r}:\n"
        f"    print(json.dumps({{'ServerURL': server, 'Username': {USER!r}, 'Secret': {password!r}}}))\n"
        "    sys.exit(0)\n"
        "print('credentials not found in native keychain')\n"
        "sys.exit(1)\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return log


def path_env(bindir: Path) -> dict[str, str]:
    return {"PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}


def http_status(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}


# --------------------------------------------------------------------------- htpasswd (Basic)


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    hashed = bcrypt_hash(PASSWORD)
    if hashed is None:
        pytest.skip("no bcrypt here for an htpasswd file (neither the bcrypt package nor crypt with METHOD_BLOWFISH)")
    work = tmp_path_factory.mktemp("basic-registry")
    htpasswd = work / "htpasswd"
    htpasswd.write_text(f"{USER}:{hashed}\n")
    reg = start_registry(work, auth=f"auth:\n  htpasswd:\n    realm: basic-realm\n    path: {htpasswd}\n")
    yield reg
    reg.stop()


@pytest.fixture
def basic_url(basic_registry: Registry) -> str:
    return basic_registry.url(f"kiln/a{uuid.uuid4().hex[:12]}")


def test_the_registry_itself_wants_basic_credentials(basic_registry: Registry) -> None:
    """Independent of Kiln: anonymous is refused with a Basic challenge, the right password accepted."""
    status, headers = http_status(f"http://{basic_registry.host}/v2/")
    assert status == 401 and headers["www-authenticate"].startswith("Basic realm=\"basic-realm\"")
    assert http_status(f"http://{basic_registry.host}/v2/", {"Authorization": "Basic " + b64_auth(USER, WRONG)})[0] == 401
    assert http_status(f"http://{basic_registry.host}/v2/", {"Authorization": "Basic " + b64_auth(USER, PASSWORD)})[0] == 200


def test_no_credentials_says_the_registry_requires_them(basic_registry: Registry, basic_url: str, model: Path,
                                                        tmp_path: Path) -> None:
    key, _ = small_artifact(tmp_path, model, 1)
    line = one_line_error(kiln_remote(basic_url, "push", "--key", key))
    assert basic_registry.host in line and "requires credentials" in line
    assert "KILN_OCI_USERNAME" in line and "login" in line  # says how to give them


def test_wrong_password_is_refused_naming_the_user_never_the_password(basic_registry: Registry, basic_url: str,
                                                                     model: Path, tmp_path: Path) -> None:
    key, _ = small_artifact(tmp_path, model, 2)
    r = kiln_remote(basic_url, "push", "--key", key, env={"KILN_OCI_USERNAME": USER, "KILN_OCI_PASSWORD": WRONG})
    line = one_line_error(r)
    assert basic_registry.host in line and "refused" in line and "401" in line
    assert repr(USER) in line and "KILN_OCI_USERNAME" in line  # who, and where the credentials came from
    no_secret(r, WRONG)


def test_wrong_password_in_docker_config_names_the_config(basic_registry: Registry, basic_url: str, model: Path,
                                                          tmp_path: Path) -> None:
    path = write_docker_config({"auths": {basic_registry.host: {"auth": b64_auth(USER, WRONG)}}})
    key, _ = small_artifact(tmp_path, model, 3)
    r = kiln_remote(basic_url, "push", "--key", key)
    line = one_line_error(r)
    assert "refused" in line and repr(USER) in line and str(path) in line
    no_secret(r, WRONG)


SOURCES = ["env", "auths-host", "auths-url", "auths-username-password", "credHelpers", "credsStore",
           "env-beats-config", "credHelpers-beat-auths"]


@pytest.mark.parametrize("source", SOURCES)
def test_right_credentials_from_each_source_round_trip(source: str, basic_registry: Registry, basic_url: str,
                                                       model: Path, tmp_path: Path) -> None:
    host = basic_registry.host
    bindir = tmp_path / "bin"
    env: dict[str, str] = {}
    helper_log: Path | None = None
    if source == "env":
        env = {"KILN_OCI_USERNAME": USER, "KILN_OCI_PASSWORD": PASSWORD}
    elif source == "auths-host":
        write_docker_config({"auths": {host: {"auth": b64_auth(USER, PASSWORD)}}})
    elif source == "auths-url":
        write_docker_config({"auths": {"other.example:5000": {"auth": b64_auth("bob", WRONG)},
                                       f"http://{host}": {"auth": b64_auth(USER, PASSWORD)}}})
    elif source == "auths-username-password":
        write_docker_config({"auths": {host: {"username": USER, "password": PASSWORD}}})
    elif source == "credHelpers":
        helper_log = credential_helper(bindir, "kilntest", host)
        write_docker_config({"credHelpers": {host: "kilntest"}})
        env = path_env(bindir)
    elif source == "credsStore":
        helper_log = credential_helper(bindir, "kilntest", host)
        write_docker_config({"credsStore": "kilntest"})
        env = path_env(bindir)
    elif source == "env-beats-config":
        write_docker_config({"auths": {host: {"auth": b64_auth(USER, WRONG)}}})
        env = {"KILN_OCI_USERNAME": USER, "KILN_OCI_PASSWORD": PASSWORD}
    elif source == "credHelpers-beat-auths":  # as the docker CLI resolves them: a per-registry helper wins
        helper_log = credential_helper(bindir, "kilntest", host)
        write_docker_config({"auths": {host: {"auth": b64_auth(USER, WRONG)}}, "credHelpers": {host: "kilntest"}})
        env = path_env(bindir)
    key, files = small_artifact(tmp_path, model, 10 + SOURCES.index(source))
    round_trip(basic_url, key, files, tmp_path, env)
    if helper_log is not None:
        calls = helper_log.read_text().splitlines()
        assert calls and set(calls) == {f"get {host}"}, calls


def test_credential_helper_not_on_path_is_a_clear_error(basic_registry: Registry, basic_url: str, model: Path,
                                                        tmp_path: Path) -> None:
    write_docker_config({"credHelpers": {basic_registry.host: "kilnmissing"}})
    key, _ = small_artifact(tmp_path, model, 4)
    line = one_line_error(kiln_remote(basic_url, "push", "--key", key))
    assert "docker-credential-kilnmissing" in line and "not on PATH" in line


def test_creds_store_holding_nothing_for_the_registry_is_anonymous(basic_registry: Registry, basic_url: str,
                                                                   model: Path, tmp_path: Path) -> None:
    """A global store that knows other registries only: anonymous, and the registry's 401 says log in."""
    bindir = tmp_path / "bin"
    log = credential_helper(bindir, "kilntest", "other.example:5000")
    write_docker_config({"credsStore": "kilntest"})
    key, _ = small_artifact(tmp_path, model, 5)
    line = one_line_error(kiln_remote(basic_url, "push", "--key", key, env=path_env(bindir)))
    assert "requires credentials" in line and basic_registry.host in line
    assert f"get {basic_registry.host}" in log.read_text()


def test_failing_credential_helper_is_a_clear_error_without_its_output(basic_registry: Registry, basic_url: str,
                                                                       model: Path, tmp_path: Path) -> None:
    """A per-registry helper that fails (exit 1, not "not found") is the user's error, named."""
    bindir = tmp_path / "bin"
    credential_helper(bindir, "kilntest", "other.example:5000")
    write_docker_config({"credHelpers": {basic_registry.host: "kilntest"}})
    key, _ = small_artifact(tmp_path, model, 6)
    line = one_line_error(kiln_remote(basic_url, "push", "--key", key, env=path_env(bindir)))
    assert "docker-credential-kilntest" in line and basic_registry.host in line


# --------------------------------------------------------------------------- token (Bearer)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class StandInTokenServer:
    """A STAND-IN token service (docker distribution's token auth spec, docs/spec/auth/token.md).

    Real ones (docker/auth, Harbor, cloud registries) cannot run here. This is a tiny
    ``http.server`` thread on 127.0.0.1: ``GET /token?service=…&scope=…`` with HTTP Basic
    credentials checked against ``users``; it answers 401 to wrong or missing ones, else
    ``{"token", "access_token", "expires_in", "issued_at"}`` where the token is a JWT signed ES256
    with a self-signed EC P-256 certificate (header ``x5c``), claims iss/sub/aud/exp/nbf/iat/jti
    and ``access`` granting, per requested ``repository:NAME:ACTIONS`` scope, the requested
    actions that are also in ``grant``. ``POST /token`` is the OAuth2 form
    (``grant_type=refresh_token``, docs/spec/auth/oauth.md) for identity tokens, checked against
    ``refresh_tokens``; it answers ``access_token`` only. ``answer`` = "access_token" makes the GET
    answer that way too. The registry (not this server) verifies the tokens, trusting the
    certificate through its ``rootcertbundle``. Every request is kept in ``seen``.
    """

    SERVICE = "kiln-test"
    ISSUER = "kiln-test-issuer"

    def __init__(self, workdir: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kiln-test token signer")])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self._key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self._key, hashes.SHA256()))
        self.cert_path = workdir / "token-signer.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.users: dict[str, str] = {}
        self.refresh_tokens: dict[str, str] = {}  # identity (refresh) token -> user
        self.answer = "both"
        self.grant: set[str] = set()
        self.seen: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                server._handle(self)

            def do_POST(self) -> None:  # noqa: N802
                server._handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.httpd.server_address[1])
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def reset(self, grant: set[str] | None = None, answer: str = "both") -> None:
        with self._lock:
            self.users = {USER: PASSWORD}
            self.refresh_tokens = {REFRESH: USER}
            self.answer = answer
            self.grant = {"pull", "push"} if grant is None else grant
            self.seen = []

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def mint(self, subject: str, scopes: list[str]) -> str:
        """A signed token granting ``scopes`` (the requested actions within ``grant``)."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        access = []
        for scope in scopes:
            head, _, actions = scope.rpartition(":")
            kind, _, name = head.partition(":")
            access.append({"type": kind, "name": name,
                           "actions": [a for a in actions.split(",") if a in self.grant]})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": [self._x5c]}
        claims = {"iss": self.ISSUER, "sub": subject, "aud": self.SERVICE, "exp": now + 300, "nbf": now - 5,
                  "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parsed = urlparse(h.path)
        query = parse_qs(parsed.query)
        user = password = refresh = None
        if h.command == "POST":
            form = parse_qs(h.rfile.read(int(h.headers.get("Content-Length") or 0)).decode())
            query = {**query, **form}
            if form.get("grant_type") == ["refresh_token"]:
                refresh = form.get("refresh_token", [None])[-1]
        auth = h.headers.get("Authorization") or ""
        if auth.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                pass
        scopes = [s for v in query.get("scope", []) for s in v.split(" ") if s]
        with self._lock:
            if refresh is not None:
                subject = self.refresh_tokens.get(refresh)
            else:
                subject = user if user is not None and self.users.get(user) == password else None
            ok = parsed.path == "/token" and subject is not None
            record = {"method": h.command, "user": user, "password": password, "refresh_token": refresh,
                      "client_id": query.get("client_id", [None])[-1], "service": query.get("service", [None])[-1],
                      "scopes": scopes, "status": 200 if ok else 401}
            self.seen.append(record)
            if ok:
                token = self.mint(subject or "", scopes)
                answer: dict[str, Any] = {"access_token": token, "expires_in": 300,
                                          "issued_at": dt.datetime.now(dt.timezone.utc).isoformat()}
                if h.command == "GET" and self.answer == "both":
                    answer["token"] = token
                body = json.dumps(answer).encode()
            else:
                body = json.dumps({"details": "incorrect username or password"}).encode()
        h.send_response(record["status"])
        if not ok:
            h.send_header("WWW-Authenticate", 'Basic realm="kiln-test token service"')
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)


@pytest.fixture(scope="module")
def token_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StandInTokenServer, Registry]]:
    pytest.importorskip("cryptography")
    work = tmp_path_factory.mktemp("token-registry")
    tokens = StandInTokenServer(work)
    try:
        reg = start_registry(work, auth=(
            "auth:\n  token:\n"
            f"    realm: {tokens.realm}\n"
            f"    service: {tokens.SERVICE}\n"
            f"    issuer: {tokens.ISSUER}\n"
            f"    rootcertbundle: {tokens.cert_path}\n"))
        try:
            yield tokens, reg
        finally:
            reg.stop()
    finally:
        tokens.stop()


@pytest.fixture
def tokens(token_service: tuple[StandInTokenServer, Registry]) -> StandInTokenServer:
    token_service[0].reset()
    return token_service[0]


@pytest.fixture
def token_registry(token_service: tuple[StandInTokenServer, Registry], tokens: StandInTokenServer) -> Registry:
    return token_service[1]


def repo_of(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[1].split("?", 1)[0]


RIGHT = {"KILN_OCI_USERNAME": USER, "KILN_OCI_PASSWORD": PASSWORD}


def test_the_registry_itself_accepts_the_stand_ins_tokens(token_registry: Registry, tokens: StandInTokenServer) -> None:
    """Independent of Kiln: a Bearer challenge naming the stand-in; its token opens the API, a forged one does not."""
    status, headers = http_status(f"http://{token_registry.host}/v2/")
    assert status == 401
    challenge = headers["www-authenticate"]
    assert challenge.startswith("Bearer ") and tokens.realm in challenge and tokens.SERVICE in challenge
    good = tokens.mint(USER, [])
    assert http_status(f"http://{token_registry.host}/v2/", {"Authorization": f"Bearer {good}"})[0] == 200
    forged = good.rsplit(".", 1)[0] + "." + _b64url(bytes(64))
    assert http_status(f"http://{token_registry.host}/v2/", {"Authorization": f"Bearer {forged}"})[0] == 401


@pytest.mark.parametrize("answer", ["both", "access_token"])
def test_token_flow_push_and_fetch_round_trip(answer: str, token_registry: Registry, tokens: StandInTokenServer,
                                              model: Path, tmp_path: Path) -> None:
    """``answer``: the token service answers {token, access_token}, or only the OAuth2 access_token."""
    tokens.reset(answer=answer)
    url = token_registry.url(f"kiln/b{uuid.uuid4().hex[:12]}")
    repo = repo_of(url)
    key, files = small_artifact(tmp_path, model, 20)
    round_trip(url, key, files, tmp_path, RIGHT)
    seen = list(tokens.seen)
    assert seen, "Kiln never asked the token service"
    assert all(s["method"] == "GET" and s["user"] == USER and s["password"] == PASSWORD and s["status"] == 200
               for s in seen), seen
    assert all(s["service"] == tokens.SERVICE for s in seen), seen
    asked = set()
    for s in seen:
        for scope in s["scopes"]:
            kind, name, actions = scope.split(":")
            assert kind == "repository" and name == repo, scope
            asked.update(actions.split(","))
    assert {"pull", "push"} <= asked, seen


def test_token_flow_without_credentials_says_they_are_required(token_registry: Registry, tokens: StandInTokenServer,
                                                               model: Path, tmp_path: Path) -> None:
    url = token_registry.url(f"kiln/b{uuid.uuid4().hex[:12]}")
    key, _ = small_artifact(tmp_path, model, 21)
    line = one_line_error(kiln_remote(url, "push", "--key", key))
    assert token_registry.host in line and "requires credentials" in line
    assert tokens.seen and all(s["user"] is None for s in tokens.seen)


def test_token_flow_wrong_password_is_refused(token_registry: Registry, tokens: StandInTokenServer, model: Path,
                                              tmp_path: Path) -> None:
    url = token_registry.url(f"kiln/b{uuid.uuid4().hex[:12]}")
    key, _ = small_artifact(tmp_path, model, 22)
    r = kiln_remote(url, "push", "--key", key, env={"KILN_OCI_USERNAME": USER, "KILN_OCI_PASSWORD": WRONG})
    line = one_line_error(r)
    assert "refused" in line and "401" in line and repr(USER) in line
    assert f"127.0.0.1:{tokens.port}" in line  # the token service is what refused
    no_secret(r, WRONG)
    assert tokens.seen and all(s["password"] == WRONG and s["status"] == 401 for s in tokens.seen)


def test_token_granting_only_pull_fetches_but_cannot_push(token_registry: Registry, tokens: StandInTokenServer,
                                                          model: Path, tmp_path: Path) -> None:
    url = token_registry.url(f"kiln/b{uuid.uuid4().hex[:12]}")
    repo = repo_of(url)
    key, files = small_artifact(tmp_path, model, 23)
    pushed = kiln_remote(url, "push", "--key", key, env=RIGHT)
    assert pushed.returncode == 0, pushed.stderr

    tokens.reset(grant={"pull"})  # a read-only robot account from here on
    dest = tmp_path / "pulled"
    fetched = kiln_remote(url, "fetch", "--key", key, "--dest", str(dest), env={**RIGHT, "KILN_HOME": str(tmp_path / "w")})
    assert fetched.returncode == 0, fetched.stderr
    assert tree(dest) == files

    key2, _ = small_artifact(tmp_path, model, 24, batch_size=2)  # another build
    assert key2 != key
    r = kiln_remote(url, "push", "--key", key2, env=RIGHT)
    line = one_line_error(r)
    assert token_registry.host in line and repr(USER) in line
    # The credentials were right; the token's scope was too small: said so, not "refused".
    assert "insufficient_scope" in line and "may not push" in line and "refused" not in line
    no_secret(r, PASSWORD)
    # The registry's own view (a token minted here, pull granted): no tag for the refused build.
    tokens.reset(grant={"pull"})
    bearer = {"Authorization": "Bearer " + tokens.mint(USER, [f"repository:{repo}:pull"]),
              "Accept": "application/vnd.oci.image.manifest.v1+json"}
    assert http_status(f"{token_registry.api(repo)}/manifests/{key}", bearer)[0] == 200
    assert http_status(f"{token_registry.api(repo)}/manifests/{key2}", bearer)[0] == 404


def test_identity_token_from_docker_config_is_exchanged_as_an_oauth2_refresh_token(
        token_registry: Registry, tokens: StandInTokenServer, model: Path, tmp_path: Path) -> None:
    """``auths[HOST].identitytoken`` (what `docker login` keeps for OAuth2 registries): a POST
    grant_type=refresh_token to the realm, never a Basic header; the token is never printed."""
    write_docker_config({"auths": {token_registry.host: {"username": USER, "identitytoken": REFRESH}}})
    url = token_registry.url(f"kiln/b{uuid.uuid4().hex[:12]}")
    repo = repo_of(url)
    key, files = small_artifact(tmp_path, model, 25)
    round_trip(url, key, files, tmp_path)
    seen = list(tokens.seen)
    assert seen and all(s["method"] == "POST" and s["refresh_token"] == REFRESH and s["user"] is None
                        and s["client_id"] and s["service"] == tokens.SERVICE and s["status"] == 200
                        for s in seen), seen
    assert any(f"repository:{repo}:" in sc and "push" in sc for s in seen for sc in s["scopes"]), seen

    tokens.refresh_tokens = {}  # revoked
    dest = tmp_path / "revoked"
    r = kiln_remote(url, "fetch", "--key", key, "--dest", str(dest), env={"KILN_HOME": str(tmp_path / "w2")})
    line = one_line_error(r)
    assert "refused" in line and "401" in line and "identitytoken" in line
    assert REFRESH not in r.stdout + r.stderr


# --------------------------------------------------------------------------- Amazon ECR


def test_ecr_hosts_get_a_token_from_the_aws_credential_chain(moto_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ECR host name is answered with ECR's GetAuthorizationToken through boto3 and the AWS chain
    (moto's ECR on loopback stands in for the service; no ECR registry is reachable here): the
    user and password are what the token decodes to, and repr never shows the password."""
    pytest.importorskip("boto3")
    from kiln.cache.remotes._oci_auth import find_credentials
    from tests.remote.conftest import aws_env

    aws_env(monkeypatch)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.endpoint)
    import boto3

    token = boto3.client("ecr", region_name="eu-west-1").get_authorization_token()["authorizationData"][0]
    user, _, password = base64.b64decode(token["authorizationToken"]).decode().partition(":")
    creds = find_credentials("123456789012.dkr.ecr.eu-west-1.amazonaws.com")
    assert creds is not None and (creds.username, creds.secret) == (user, password)
    assert "ECR" in creds.source and password not in repr(creds)
    # Not an ECR host: no AWS call, anonymous.
    assert find_credentials("registry.example.com") is None
    # No AWS credentials at all: one clear error, no token, no traceback.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    from kiln.errors import RemoteError

    with pytest.raises(RemoteError, match="cannot get an ECR token .* from the AWS credential chain"):
        find_credentials("123456789012.dkr.ecr.eu-west-1.amazonaws.com")
