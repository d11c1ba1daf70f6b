"""The trust policy file as deployments write it: what parses, what is refused before any work,
and which keys may vouch for which artifacts.

Parsing is checked in-process (``load_policy`` / ``parse_policy``) and through the CLI's root
option (click's runner, in-process); a few runs of the real ``kiln`` subprocess check that a bad
policy is one ``kiln: error:`` line and exit 2 before the store is touched (KILN_HOME is never
created, where the same command with a good policy creates it). The matching rules are checked
on :class:`IndexEntry` / :class:`Manifest` objects built here, with real model-signing bundles
made by :func:`kiln.trust.sign_manifest`.
"""

from __future__ import annotations

import hashlib
import os
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from kiln.cli import cli
from kiln.errors import SpecError, TrustError
from kiln.manifests import Descriptor, FileEntry, IndexEntry, Manifest
from kiln.manifests._manifest import CONFIG_MEDIA_TYPE
from kiln.trust import (PublicKey, Signature, TrustedKey, TrustPolicy, fingerprint_of, load_policy, load_public_key,
                        load_signing_key, parse_policy, sign_manifest)
from tests.conftest import run_kiln, write_fake_model

pytest.importorskip("model_signing", reason="signatures need model-signing (pip install 'kiln-engines[signing]')")

PINS = ["--target", "torch-aoti", "--n-positions", "256", "--toolchain", "torch=2.0.0",
        "--toolchain", "transformers=5.0.0", "--toolchain", "hardware=cpu-test"]


# --- keys and artifacts ------------------------------------------------------------------------

def _ec_pair(directory: Path, name: str, curve: str = "P-256") -> tuple[Path, Path]:
    """A private key (SEC1, as `openssl ecparam -genkey -noout` writes it) and its SPKI public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key({"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}[curve])
    private, public = directory / f"{name}.pem", directory / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def _fingerprint(public: Path) -> str:
    return "sha256:" + hashlib.sha256(public.read_bytes()).hexdigest()


@pytest.fixture
def keydir(tmp_path: Path) -> Path:
    return tmp_path / "etc"


@pytest.fixture
def release(keydir: Path) -> tuple[Path, Path]:
    return _ec_pair(keydir / "keys", "release")


@pytest.fixture
def other(keydir: Path) -> tuple[Path, Path]:
    return _ec_pair(keydir / "keys", "other")


def _policy(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _artifact(model: dict, payload: bytes = b"engine") -> tuple[IndexEntry, Manifest]:
    """An index entry and the manifest it points at (what the store hands TrustPolicy.check)."""
    files = (FileEntry("engine.pt2", _sha(payload), len(payload)), FileEntry("sub/tokenizer.json", _sha(b"{}"), 2))
    record = b'{"build": "record"}' + payload
    build_key = hashlib.sha256(b"key" + payload + repr(sorted(model.items())).encode()).hexdigest()
    manifest = Manifest(Descriptor(CONFIG_MEDIA_TYPE, _sha(record), len(record)), files, {"dev.kiln.key": build_key})
    entry = IndexEntry(key=build_key, manifest=_sha(manifest.to_bytes()), spec={}, model=dict(model), toolchain={},
                       size=sum(f.size for f in files), created="2025-01-01T00:00:00Z", files=len(files))
    return entry, manifest


def _signed(private: Path, entry: IndexEntry, manifest: Manifest) -> Signature:
    key = load_signing_key(str(private))
    return Signature(key.fingerprint, sign_manifest(key, manifest, entry.key, entry.manifest))


ACME = {"tree_digest": _sha(b"tree"), "repo_id": "acme/llama-3", "ref": "acme/llama-3@0123abc", "commit": "0" * 40}


# --- valid policies ----------------------------------------------------------------------------

@pytest.mark.parametrize("written, signed", [
    ("signed", True), ("Signed", True), ("SIGNED", True), ("'  signed '", True),
    ("any", False), ("Any", False), ("' ANY'", False),
])
def test_require_is_read_case_and_space_insensitively(tmp_path: Path, release, written: str, signed: bool) -> None:
    p = _policy(tmp_path / "etc" / "policy.yaml", f"""\
        require: {written}
        keys:
          - public_key: keys/release.pub.pem
        """)
    policy = load_policy(p)
    assert policy.require_signed is signed
    assert policy.source == str(p)
    assert [k.key.fingerprint for k in policy.keys] == [_fingerprint(release[1])]


def test_require_is_required_and_any_needs_no_keys(tmp_path: Path) -> None:
    for text in ("require: any\n", "require: any\nkeys: []\n"):
        policy = load_policy(_policy(tmp_path / "p.yaml", text))
        assert policy.require_signed is False and policy.keys == ()
    # A policy that forgets `require` must not quietly mean "anything goes".
    for text in ("keys: []\n", "{}\n", "keys:\n  - public_key: x.pem\n"):
        with pytest.raises(SpecError, match="has no `require:`"):
            load_policy(_policy(tmp_path / "p.yaml", text))


def test_models_and_remotes_as_a_list_or_one_string(tmp_path: Path, release) -> None:
    p = _policy(tmp_path / "etc" / "policy.yaml", """\
        require: signed
        keys:
          - name: as-lists
            public_key: keys/release.pub.pem
            models: ["acme/*", " other/model "]
            remotes:
              - s3://ml-engines/*
              - /srv/engines
          - name: as-strings
            public_key: keys/release.pub.pem
            models: acme/*
            remotes: s3://ml-engines/prod
          - name: unrestricted
            public_key: keys/release.pub.pem
        """)
    lists, strings, free = load_policy(p).keys
    assert (lists.name, lists.models, lists.remotes) == ("as-lists", ("acme/*", "other/model"),
                                                          ("s3://ml-engines/*", "/srv/engines"))
    assert (strings.name, strings.models, strings.remotes) == ("as-strings", ("acme/*",), ("s3://ml-engines/prod",))
    assert (free.models, free.remotes) == ((), ())


def test_public_key_paths_are_relative_to_the_policy_file_not_the_cwd(tmp_path: Path, release,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    p = _policy(tmp_path / "etc" / "policy.yaml", "require: signed\nkeys:\n  - public_key: keys/release.pub.pem\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (key,) = load_policy(p).keys
    assert key.key.fingerprint == _fingerprint(release[1])
    assert key.name == "keys/release.pub.pem"  # no name: the key's name, as written
    # The policy named relatively ("etc/policy.yaml" from tmp_path) still resolves beside itself.
    monkeypatch.chdir(tmp_path)
    (key,) = load_policy("etc/policy.yaml").keys
    assert key.key.fingerprint == _fingerprint(release[1])
    # A path that exists only relative to the cwd is not found.
    monkeypatch.chdir(tmp_path / "etc")
    q = _policy(tmp_path / "other" / "policy.yaml", "require: signed\nkeys:\n  - public_key: keys/release.pub.pem\n")
    with pytest.raises(SpecError, match="relative to the policy file") as e:
        load_policy(q)
    assert str(tmp_path / "other" / "keys" / "release.pub.pem") in str(e.value)


def test_absolute_and_home_relative_public_key_paths(tmp_path: Path, release, monkeypatch: pytest.MonkeyPatch) -> None:
    p = _policy(tmp_path / "policies" / "p.yaml",
                f"require: signed\nkeys:\n  - name: abs\n    public_key: {release[1]}\n")
    (key,) = load_policy(p).keys
    assert (key.name, key.key.fingerprint) == ("abs", _fingerprint(release[1]))
    monkeypatch.setenv("HOME", str(release[1].parent))
    p = _policy(tmp_path / "policies" / "p.yaml", "require: signed\nkeys:\n  - public_key: ~/release.pub.pem\n")
    (key,) = load_policy(p).keys
    assert key.key.fingerprint == _fingerprint(release[1])


def test_inline_pem_as_a_yaml_block_scalar(tmp_path: Path, release) -> None:
    pem = release[1].read_text()
    text = "require: signed\nkeys:\n  - public_key: |\n" + "".join(f"      {line}\n" for line in pem.splitlines())
    policy = load_policy(_policy(tmp_path / "p.yaml", text))
    (key,) = policy.keys
    assert key.key.fingerprint == _fingerprint(release[1])
    assert key.name == "(inline PEM)"
    # Named, and without the block scalar's trailing newline (|-): the same key.
    text = "require: signed\nkeys:\n  - name: ci\n    public_key: |-\n" + "".join(
        f"      {line}\n" for line in pem.splitlines())
    (key,) = load_policy(_policy(tmp_path / "p.yaml", text)).keys
    assert (key.name, key.key.fingerprint) == ("ci", _fingerprint(release[1]))


def test_parse_policy_without_a_base_reads_paths_from_the_cwd(tmp_path: Path, release,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(release[1].parent)
    policy = parse_policy(b"require: signed\nkeys:\n  - public_key: release.pub.pem\n", "inline", None)
    assert policy.source == "inline" and policy.keys[0].key.fingerprint == _fingerprint(release[1])


def test_a_good_policy_via_the_cli_lets_the_command_run(tmp_path: Path, release) -> None:
    """The control for the refusals below: the same lookup with a good policy runs (a miss, exit 1)
    and creates the store — so "KILN_HOME not created" below means the policy stopped it."""
    home = Path(os.environ["KILN_HOME"])
    model = write_fake_model(tmp_path / "model")
    p = _policy(tmp_path / "etc" / "policy.yaml", "require: signed\nkeys:\n  - public_key: keys/release.pub.pem\n")
    r = CliRunner().invoke(cli, ["--trust-policy", str(p), "lookup", str(model), *PINS])
    assert r.exit_code == 1, r.output
    assert "miss" in r.stdout and home.is_dir()


# --- refusals, before any work ------------------------------------------------------------------

def _rsa_public(path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))


def _pkcs8_private(path: Path) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_bytes(pem)
    return pem.decode().splitlines()[1]  # a line of the secret, which must never be printed


# (id, policy text, extra setup, words the one error line must hold: the bad value and the fix)
BAD = [
    ("missing-file", None, None, ["does not exist", "--trust-policy / KILN_TRUST_POLICY"]),
    ("not-yaml", "require: signed\nkeys:\n  - name: a\n   public_key: keys/release.pub.pem\n", None,
     ["not valid YAML", "at line 4"]),
    ("not-yaml-flow", "require: signed\nkeys: [\n", None, ["not valid YAML", "line"]),
    ("not-a-mapping", "- require: signed\n- keys: []\n", None, ["must be a mapping", "`require:` and `keys:`",
                                                                   "require"]),
    ("a-scalar", "signed\n", None, ["must be a mapping", "'signed'"]),
    ("empty-file", "", None, ["must be a mapping", "None"]),
    ("requires-typo", "requires: signed\nkeys:\n  - public_key: keys/release.pub.pem\n", None,
     ["unknown field(s) requires", "a policy has `require` and `keys`"]),
    ("unknown-key-field", "require: signed\nkeys:\n  - public_key: keys/release.pub.pem\n    model: [acme/*]\n", None,
     ["keys[0]: unknown field(s) model", "a key has models, name, public_key, remotes"]),
    ("require-maybe", "require: maybe\nkeys:\n  - public_key: keys/release.pub.pem\n", None,
     ["require: 'maybe' is not `signed` or `any`"]),
    ("require-bool", "require: yes\nkeys:\n  - public_key: keys/release.pub.pem\n", None,
     ["require: True is not `signed` or `any`"]),
    ("keys-a-mapping", "require: signed\nkeys:\n  name: ci\n  public_key: keys/release.pub.pem\n", None,
     ["keys must be a list", "{name, public_key, models, remotes}", "'ci'"]),
    ("key-a-string", "require: signed\nkeys:\n  - keys/release.pub.pem\n", None,
     ["keys[0] must be a mapping with public_key", "'keys/release.pub.pem'"]),
    ("no-public-key", "require: signed\nkeys:\n  - name: ci\n    models: [acme/*]\n", None,
     ["keys[0] has no public_key", "a PEM file relative to the policy"]),
    ("public-key-file-missing", "require: signed\nkeys:\n  - public_key: keys/absent.pub.pem\n", None,
     ["keys[0]: public key file", "absent.pub.pem does not exist", "relative to the policy file"]),
    ("public-key-is-private", "require: signed\nkeys:\n  - public_key: keys/release.pem\n", "pkcs8",
     ["keys[0]:", "release.pem' holds a private key", "public keys only", "openssl ec -in key.pem -pubout"]),
    ("rsa-key", "require: signed\nkeys:\n  - public_key: keys/rsa.pub.pem\n", "rsa",
     ["'keys/rsa.pub.pem' is not an EC P-256, P-384 or P-521 key", "openssl ecparam -genkey -name prime256v1"]),
    ("not-pem", "require: signed\nkeys:\n  - public_key: keys/junk.pub.pem\n", "junk",
     ["'keys/junk.pub.pem' is not a PEM public key", "-----BEGIN PUBLIC KEY-----"]),
    ("signed-without-keys", "require: signed\n", None, ["`require: signed` but lists no keys", "Add the keys"]),
    ("signed-with-empty-keys", "require: signed\nkeys: []\n", None, ["`require: signed` but lists no keys"]),
    ("models-not-strings", "require: signed\nkeys:\n  - public_key: keys/release.pub.pem\n    models: [1, 2]\n",
     None, ["keys[0]: models must be a list of patterns", "[1, 2]"]),
    ("remotes-empty-string", "require: signed\nkeys:\n  - public_key: keys/release.pub.pem\n    remotes: ['']\n",
     None, ["keys[0]: remotes must be a list of patterns"]),
    ("name-not-a-string", "require: signed\nkeys:\n  - public_key: keys/release.pub.pem\n    name: [a]\n", None,
     ["keys[0]: name must be a string", "['a']"]),
    ("second-key-bad", "require: signed\nkeys:\n  - public_key: keys/release.pub.pem\n  - public_key: keys/gone.pem\n",
     None, ["keys[1]: public key file", "gone.pem"]),
]


def _setup(case: str | None, etc: Path) -> str | None:
    if case == "pkcs8":
        return _pkcs8_private(etc / "keys" / "release.pem")  # replaces the fixture's SEC1 key
    if case == "rsa":
        _rsa_public(etc / "keys" / "rsa.pub.pem")
    if case == "junk":
        (etc / "keys" / "junk.pub.pem").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI not a pem\n")
    return None


def _bad_policy(tmp_path: Path, text: str | None, setup: str | None) -> tuple[Path, str | None]:
    etc = tmp_path / "etc"
    secret = _setup(setup, etc)
    path = etc / "policy.yaml"
    if text is not None:
        _policy(path, text)
    else:
        path = etc / "no-such-policy.yaml"
    return path, secret


def _one_error_line(stderr: str, words: list[str], secret: str | None = None) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("kiln: error: "), stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    if secret is not None:
        assert secret not in stderr
    return lines[0]


@pytest.mark.parametrize("name, text, setup, words", BAD, ids=[b[0] for b in BAD])
def test_a_bad_policy_is_one_error_line_and_exit_2_before_the_store(tmp_path: Path, release, name: str,
                                                                   text: str | None, setup: str | None,
                                                                   words: list[str]) -> None:
    path, secret = _bad_policy(tmp_path, text, setup)
    home = Path(os.environ["KILN_HOME"])
    model = write_fake_model(tmp_path / "model")
    r = CliRunner().invoke(cli, ["--trust-policy", str(path), "lookup", str(model), *PINS])
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert r.stdout == ""
    line = _one_error_line(r.stderr, words, secret)
    if name != "rsa-key":  # see test_a_non_ec_key_error_names_the_policy_and_the_key
        assert line.startswith(f"kiln: error: trust policy {path}"), line  # the file it is about
    assert not home.exists(), "a bad policy must stop the command before the store is touched"
    # load_policy itself says the same, as a SpecError.
    with pytest.raises(SpecError) as e:
        load_policy(path)
    assert f"kiln: error: {e.value}" == line


def test_a_bad_policy_stops_the_real_cli_before_the_store(tmp_path: Path, release) -> None:
    """As a user sees it: `kiln --trust-policy P lookup …`, `kiln lookup … --trust-policy P` and
    KILN_TRUST_POLICY=P each exit 2 with one line, and KILN_HOME is never created."""
    home = Path(os.environ["KILN_HOME"])
    model = str(write_fake_model(tmp_path / "model"))
    typo = _policy(tmp_path / "etc" / "typo.yaml", "requires: signed\nkeys:\n  - public_key: keys/release.pub.pem\n")
    r = run_kiln("--trust-policy", str(typo), "lookup", model, *PINS)
    assert r.returncode == 2, r.stdout + r.stderr
    _one_error_line(r.stderr, ["unknown field(s) requires"])
    assert r.stdout == "" and not home.exists()

    secret = _pkcs8_private(tmp_path / "etc" / "keys" / "ci.pem")
    private = _policy(tmp_path / "etc" / "private.yaml", "require: signed\nkeys:\n  - public_key: keys/ci.pem\n")
    r = run_kiln("lookup", model, *PINS, "--trust-policy", str(private))
    assert r.returncode == 2, r.stdout + r.stderr
    _one_error_line(r.stderr, ["holds a private key"], secret)
    assert not home.exists()

    maybe = _policy(tmp_path / "etc" / "maybe.yaml", "require: maybe\n")
    r = run_kiln("fetch", "--key", "a" * 64, "--dest", str(tmp_path / "dest"), env={"KILN_TRUST_POLICY": str(maybe)})
    assert r.returncode == 2, r.stdout + r.stderr
    _one_error_line(r.stderr, ["require: 'maybe' is not `signed` or `any`"])
    assert not home.exists() and not (tmp_path / "dest").exists()

    r = run_kiln("lookup", model, *PINS, env={"KILN_TRUST_POLICY": str(tmp_path / "nowhere.yaml")})
    assert r.returncode == 2, r.stdout + r.stderr
    _one_error_line(r.stderr, ["nowhere.yaml does not exist", "KILN_TRUST_POLICY"])
    assert not home.exists()


def test_a_non_ec_key_error_names_the_policy_and_the_key(tmp_path: Path, release) -> None:
    _rsa_public(tmp_path / "etc" / "keys" / "rsa.pub.pem")
    p = _policy(tmp_path / "etc" / "policy.yaml",
                "require: signed\nkeys:\n  - public_key: keys/release.pub.pem\n  - public_key: keys/rsa.pub.pem\n")
    with pytest.raises(SpecError) as e:
        load_policy(p)
    assert "not an EC P-256" in str(e.value)
    assert str(e.value).startswith(f"trust policy {p}, keys[1]"), str(e.value)


def test_an_inline_private_key_is_refused_without_echoing_it(tmp_path: Path) -> None:
    secret = _pkcs8_private(tmp_path / "k.pem")
    pem = (tmp_path / "k.pem").read_text()
    text = "require: signed\nkeys:\n  - public_key: |\n" + "".join(f"      {line}\n" for line in pem.splitlines())
    with pytest.raises(SpecError, match="holds a private key") as e:
        load_policy(_policy(tmp_path / "p.yaml", text))
    assert secret not in str(e.value) and "BEGIN" not in str(e.value)


def test_an_oversized_policy_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "big.yaml"
    p.write_text("require: any\n" + "#" * (1024 * 1024) + "\n")
    with pytest.raises(SpecError, match="more than the 1 MiB"):
        load_policy(p)


# --- matching: which key may vouch for which artifact --------------------------------------------

def _key(public: Path, models: tuple[str, ...] = (), remotes: tuple[str, ...] = (), name: str = "ci") -> TrustedKey:
    return TrustedKey(name, load_public_key(str(public)), models, remotes)


@pytest.mark.parametrize("patterns, names, ok", [
    (("acme/*",), ["acme/llama-3"], True),
    (("ACME/*",), ["acme/llama-3"], True),  # Hub ids compare case-insensitively
    (("acme/*",), ["Acme/Llama-3"], True),
    (("acme/llama-?",), ["acme/llama-3"], True),
    (("acme/llama-?",), ["acme/llama-30"], False),  # ? is one character
    (("acme/llama",), ["acme/llama-evil"], False),  # no implicit prefix match
    (("acme/*",), ["evil/acme-llama"], False),
    (("acme/*",), ["acmecorp/llama"], False),
    (("other/*", "acme/llama-3"), ["acme/llama-3"], True),  # any pattern
    (("acme/llama-3@0123*",), ["acme/llama-3@0123abc", "acme/llama-3"], True),
    (("acme/llama-3@main",), ["acme/llama-3@0123abc", "acme/llama-3"], False),
    (("acme/*",), [], False),  # no Hub id or ref: a model-restricted key cannot vouch
])
def test_models_patterns(release, patterns: tuple[str, ...], names: list[str], ok: bool) -> None:
    why = _key(release[1], models=patterns).refuses(names, ["s3://ml-engines/prod"])
    if ok:
        assert why is None
    else:
        assert why is not None and "only for models" in why and repr(list(patterns)) in why
        assert (", ".join(names) or "a model with no Hub id or ref") in why


@pytest.mark.parametrize("patterns, origins, ok", [
    (("s3://ml-engines/*",), ["s3://ml-engines/prod"], True),
    (("s3://ml-engines/*",), ["s3://ml-engines-evil/prod"], False),
    (("s3://ml-engines/prod",), ["s3://ml-engines/prod"], True),
    (("s3://ml-engines/prod",), ["s3://ml-engines/prod2"], False),
    (("s3://ml-engines/pro?",), ["s3://ml-engines/prod"], True),
    (("/srv/engines",), ["s3://ml-engines/prod", "/srv/engines"], True),  # any origin it was verified from
    (("s3://ml-engines/*",), [None], False),  # built here, never pulled
    (("s3://ml-engines/*",), [], False),
    (("s3://ml-engines/*",), [None, "s3://ml-engines/prod"], True),
])
def test_remotes_patterns(release, patterns: tuple[str, ...], origins: list, ok: bool) -> None:
    why = _key(release[1], remotes=patterns).refuses(["acme/llama-3"], origins)
    if ok:
        assert why is None
    else:
        assert why is not None and "only for remotes" in why and repr(list(patterns)) in why
        if not any(origins):
            assert "the local store (built here, never pulled)" in why


def test_a_key_without_models_or_remotes_matches_everything(release) -> None:
    free = _key(release[1])
    for names, origins in ((["acme/llama-3"], ["s3://x/y"]), ([], [None]), (["Whatever/At@all"], []), ([], [])):
        assert free.refuses(names, origins) is None


def test_check_accepts_a_signature_by_a_matching_key(tmp_path: Path, release) -> None:
    entry, manifest = _artifact(ACME)
    policy = TrustPolicy("p.yaml", True, (_key(release[1], models=("ACME/*",), name="ci-release"),))
    ok = policy.check(entry, manifest, [_signed(release[0], entry, manifest)], ["s3://ml-engines/prod"])
    assert ok is not None
    assert ok.fingerprint == _fingerprint(release[1]) and ok.key_name == "ci-release"  # the policy's name for it


@pytest.mark.parametrize("model, pattern", [
    ({"tree_digest": _sha(b"t"), "ref": "acme/llama-3@0123abc"}, "acme/llama-3"),  # ref without its @revision
    ({"tree_digest": _sha(b"t"), "ref": "acme/llama-3@0123abc"}, "acme/llama-3@0123abc"),  # ref with it
    ({"tree_digest": _sha(b"t"), "ref": "acme/llama-3"}, "acme/*"),
    ({"tree_digest": _sha(b"t"), "repo_id": "Acme/Llama-3"}, "acme/llama-3"),  # repo_id, case-insensitively
    ({"tree_digest": _sha(b"t"), "repo_id": "acme/llama-3", "ref": "/models/local-copy"}, "acme/*"),
])
def test_check_matches_models_against_repo_id_and_ref(release, model: dict, pattern: str) -> None:
    entry, manifest = _artifact(model)
    policy = TrustPolicy("p.yaml", True, (_key(release[1], models=(pattern,)),))
    assert policy.check(entry, manifest, [_signed(release[0], entry, manifest)], [None]) is not None


def test_check_refuses_a_model_the_key_is_not_trusted_for(release) -> None:
    entry, manifest = _artifact({"tree_digest": _sha(b"t"), "repo_id": "evil/llama", "ref": "evil/llama@main"})
    policy = TrustPolicy("p.yaml", True, (_key(release[1], models=("acme/*",), name="ci-release"),))
    with pytest.raises(TrustError) as e:
        policy.check(entry, manifest, [_signed(release[0], entry, manifest)], [None])
    msg = str(e.value)
    assert entry.key[:12] in msg and _fingerprint(release[1]) in msg and "'ci-release'" in msg
    assert "only for models ['acme/*']" in msg and "evil/llama" in msg and "Nothing was materialised" in msg


def test_a_remote_restricted_key_does_not_vouch_for_a_local_build(release) -> None:
    entry, manifest = _artifact(ACME)
    sig = _signed(release[0], entry, manifest)
    policy = TrustPolicy("p.yaml", True, (_key(release[1], remotes=("s3://ml-engines/*",), name="ci-release"),))
    with pytest.raises(TrustError) as e:
        policy.check(entry, manifest, [sig], [None])
    assert "the local store (built here, never pulled)" in str(e.value)
    assert "from the local store" in str(e.value)
    # Pulled from (or verified earlier from) the trusted remote: accepted.
    assert policy.check(entry, manifest, [sig], ["s3://ml-engines/prod"]) is not None
    with pytest.raises(TrustError, match="s3://elsewhere/prod"):
        policy.check(entry, manifest, [sig], ["s3://elsewhere/prod"])


def test_check_refuses_unsigned_and_unknown_signers_under_require_signed(release, other) -> None:
    entry, manifest = _artifact(ACME)
    policy = TrustPolicy("p.yaml", True, (_key(release[1]),))
    with pytest.raises(TrustError, match="is unsigned.*require: signed"):
        policy.check(entry, manifest, [], [None])
    with pytest.raises(TrustError) as e:
        policy.check(entry, manifest, [_signed(other[0], entry, manifest)], [None])
    assert f"signed by key {_fingerprint(other[1])}, which the policy does not list" in str(e.value)
    # One good signature among bad ones is enough.
    sigs = [_signed(other[0], entry, manifest), _signed(release[0], entry, manifest)]
    assert policy.check(entry, manifest, sigs, [None]).fingerprint == _fingerprint(release[1])


def test_a_signature_filed_under_a_trusted_fingerprint_still_has_to_verify(release, other) -> None:
    """The fingerprint a signature is filed under (or its bundle's hint) only picks the key to try."""
    entry, manifest = _artifact(ACME)
    forged = Signature(_fingerprint(release[1]), _signed(other[0], entry, manifest).data)
    policy = TrustPolicy("p.yaml", True, (_key(release[1]),))
    with pytest.raises(TrustError):
        policy.check(entry, manifest, [forged], [None])
    # A signature of another artifact does not carry over.
    entry2, manifest2 = _artifact(ACME, payload=b"other engine")
    moved = _signed(release[0], entry2, manifest2)
    with pytest.raises(TrustError, match="does not verify|another artifact|other files"):
        policy.check(entry, manifest, [moved], [None])


def test_require_any_accepts_unsigned_artifacts(tmp_path: Path, release, other) -> None:
    p = _policy(tmp_path / "etc" / "policy.yaml", """\
        require: any
        keys:
          - public_key: keys/release.pub.pem
            models: [acme/*]
            remotes: [s3://ml-engines/*]
        """)
    policy = load_policy(p)
    entry, manifest = _artifact({"tree_digest": _sha(b"t"), "repo_id": "evil/model"})
    assert policy.check(entry, manifest, [], [None]) is None
    assert policy.check(entry, manifest, [_signed(other[0], entry, manifest)], ["s3://elsewhere"]) is None


def test_a_policy_file_end_to_end(tmp_path: Path, release, other) -> None:
    """Parsed from YAML, the rules above apply: each key to its own models and remotes."""
    p = _policy(tmp_path / "etc" / "policy.yaml", """\
        require: Signed
        keys:
          - name: ci-release
            public_key: keys/release.pub.pem
            models: acme/*
            remotes: [s3://ml-engines/*]
          - name: research
            public_key: keys/other.pub.pem
            models: [lab/*]
        """)
    policy = load_policy(p)
    acme, acme_m = _artifact(ACME)
    lab, lab_m = _artifact({"tree_digest": _sha(b"lab"), "repo_id": "lab/tiny", "ref": "lab/tiny"})
    assert policy.check(acme, acme_m, [_signed(release[0], acme, acme_m)], ["s3://ml-engines/prod"]).key_name == \
        "ci-release"
    assert policy.check(lab, lab_m, [_signed(other[0], lab, lab_m)], [None]) is not None  # no remotes: local ok
    with pytest.raises(TrustError, match="'research'.*only for models"):
        policy.check(acme, acme_m, [_signed(other[0], acme, acme_m)], ["s3://ml-engines/prod"])
    with pytest.raises(TrustError, match="'ci-release'.*only for models"):
        policy.check(lab, lab_m, [_signed(release[0], lab, lab_m)], [None])
    with pytest.raises(TrustError, match="'ci-release'.*only for remotes"):
        policy.check(acme, acme_m, [_signed(release[0], acme, acme_m)], [None])
    assert str(p) in str(policy.describe())


def test_one_key_listed_twice_with_two_scopes_is_trusted_for_both(tmp_path: Path, release) -> None:
    p = _policy(tmp_path / "etc" / "policy.yaml", """\
        require: signed
        keys:
          - name: ci-acme
            public_key: keys/release.pub.pem
            models: [acme/*]
          - name: ci-lab
            public_key: keys/release.pub.pem
            models: [lab/*]
        """)
    policy = load_policy(p)
    acme, acme_m = _artifact(ACME)
    assert policy.check(acme, acme_m, [_signed(release[0], acme, acme_m)], [None]) is not None


def test_public_keys_of_another_curve_are_accepted(tmp_path: Path) -> None:
    private, public = _ec_pair(tmp_path / "k", "p384", curve="P-384")
    p = _policy(tmp_path / "k" / "policy.yaml", "require: signed\nkeys:\n  - public_key: p384.pub.pem\n")
    policy = load_policy(p)
    assert isinstance(policy.keys[0].key, PublicKey)
    assert policy.keys[0].key.fingerprint == fingerprint_of(load_signing_key(str(private)).public_key())
    entry, manifest = _artifact(ACME)
    assert policy.check(entry, manifest, [_signed(private, entry, manifest)], [None]) is not None
