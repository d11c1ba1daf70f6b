"""Options shared by commands, defined once: the spec flags (as one value), layouts, toolchain pins, remotes.

Every command that takes a spec declares ``@spec_options`` and receives one
:class:`SpecRequest` (``spec=``): the flags as written, plus ``--from-env`` /
``--serving-properties`` / ``--calib-file`` / ``--toolchain``. :func:`resolve_request` turns it
into an :class:`~kiln.api.Resolution` the same way for every command.

Every command that uses a remote declares ``@remote_option`` (``--remote URL`` after the
subcommand, overriding the root group's ``--remote`` and ``KILN_REMOTE``), or, where
``--remote`` means "act on the remote" (``ls``, ``show``, ``gc``), :func:`remote_flag_option`
(``--remote`` alone: the configured remote; ``--remote URL``: that one).

Trust: ``@trust_policy_option`` (``--trust-policy FILE`` after the subcommand, as well as before
it or ``KILN_TRUST_POLICY``) sets the store's policy; ``@sign_key_option`` (``--sign-key KEY``,
``KILN_SIGN_KEY``) hands the command a loaded :class:`~kiln.api.SigningKey` or None. Both are read
when the command line is parsed, so a bad policy or key is an error before any work.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import click

from .. import api
from .._redact import redact
from ..spec import CALIB_SET_OPTION, Field
from ._context import remote, set_remote_url, store
from ._output import human_size
from ._progress import TransferBar

__all__ = ["SpecRequest", "spec_options", "spec_flag_options", "resolve_request", "layout_options", "link_option",
           "toolchain_option", "remote_option", "remote_flag_option", "use_remote_flag", "key_option", "refuse_spec_with_key",
           "trust_policy_option", "sign_key_option"]

# Spec field -> the flag that sets it (for messages naming where a value came from).
SPEC_FLAGS = {
    "target": "--target",
    "n_positions": "--n-positions",
    "batch_size": "--batch-size",
    "tp_degree": "--tp-degree",
    "dtype": "--dtype",
    "smoothquant_alpha": "--smoothquant",
    "per_token": "--per-token",
    "per_channel": "--per-channel",
    "int8_kv_cache": "--int8-kv-cache",
}


@dataclass(frozen=True)
class SpecRequest:
    """What the user asked for with spec flags, before resolution."""

    model: str | None = None
    values: Mapping[str, Any] = field(default_factory=dict)  # spec field -> raw flag value (set ones only)
    instance_type: str | None = None
    consumer: str | None = None  # --consumer NAME[:VERSION]
    options: tuple[str, ...] = ()  # NAME=VALUE
    from_env: bool = False
    serving_properties: Path | None = None
    calib_file: Path | None = None
    toolchain_pins: tuple[str, ...] = ()
    strict_revision: bool = False  # --strict-revision: a Hub branch/tag is never resolved from model records

    @property
    def names_a_spec(self) -> bool:
        """MODEL, --from-env or --serving-properties: something to resolve."""
        return self.model is not None or self.from_env or self.serving_properties is not None

    def given_flags(self) -> list[str]:
        """The spec flags set on the command line other than MODEL and --toolchain."""
        out = [SPEC_FLAGS[k] for k in self.values]
        out += ["--instance-type"] if self.instance_type else []
        out += ["--consumer"] if self.consumer else []
        out += ["--option"] if self.options else []
        out += ["--from-env"] if self.from_env else []
        out += ["--serving-properties"] if self.serving_properties else []
        out += ["--calib-file"] if self.calib_file else []
        return out

    def fields(self) -> dict[str, Field]:
        flags: dict[str, Field] = {}
        if self.model is not None:
            flags["model"] = Field(self.model, "MODEL")
        for name, value in self.values.items():
            flags[name] = Field(value, SPEC_FLAGS[name])
        if self.instance_type:
            flags["option.instance_type"] = Field(self.instance_type, "--instance-type")
        if self.consumer:
            flags["option.consumer"] = Field(self.consumer.strip().lower(), "--consumer")
        for item in self.options:
            name, sep, value = item.partition("=")
            if not sep:
                raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--option")
            flags[f"option.{name.strip()}"] = Field(value, f"--option {name.strip()}")
        if self.calib_file is not None:
            flags[f"option.{CALIB_SET_OPTION}"] = Field(api.file_digest(self.calib_file), "--calib-file")
        return flags


_OPTIONS = [
    click.argument("model", required=False),
    click.option("--target", "-t", help=f"{', '.join(api.TARGETS)}."),
    click.option("--n-positions", help="Max input + output tokens the engine is compiled for."),
    click.option("--batch-size", help="Batch size (LMI: max_rolling_batch_size)."),
    click.option("--tp-degree", help="Tensor-parallel degree."),
    click.option("--dtype", help="fp32, fp16 or bf16 (float32/float16/bfloat16 accepted)."),
    click.option("--smoothquant", "smoothquant_alpha", metavar="ALPHA", help="SmoothQuant with this alpha in [0, 1] (trtllm)."),
    click.option("--per-token", is_flag=True, default=None, help="SmoothQuant per-token activation scales."),
    click.option("--per-channel", is_flag=True, default=None, help="SmoothQuant per-channel weight scales."),
    click.option("--int8-kv-cache", is_flag=True, default=None, help="INT8 KV cache (trtllm)."),
    click.option("--instance-type", help="Instance type, e.g. ml.inf2.24xlarge (validation, hardware class, tp=max)."),
    click.option("--consumer", metavar="NAME:VERSION",
                 help="Who will load the engine, e.g. lmi-neuronx:0.29.0 (neuron), lmi-trtllm:0.33.0 or "
                      "triton-trtllm:0.19.0 (trtllm): Kiln compiles exactly as it would, with its image's toolchain, "
                      "and lays it out as it reads it [LMI configuration: OPTION_KILN_CONSUMER]."),
    click.option("--option", "-o", "target_options", multiple=True, metavar="NAME=VALUE", help="Target option, e.g. gqa_strategy=shard-over-heads."),
    click.option("--from-env", is_flag=True,
                 help="Read SageMaker LMI OPTION_* / HF_MODEL_ID environment variables. OPTION_KILN_TARGET names the "
                      "target (torch-aoti, trtllm, neuron); it is needed for torch-aoti, which no LMI setting selects."),
    click.option("--serving-properties", type=click.Path(path_type=Path), metavar="FILE", help="Read an LMI serving.properties file."),
    click.option("--calib-file", type=click.Path(path_type=Path, exists=True, dir_okay=False), metavar="FILE",
                 help="SmoothQuant calibration texts (plain text paragraphs, or JSONL with a text field)."),
    click.option("--strict-revision", is_flag=True, default=None,
                 help="A Hub id whose files are not here resolves from model records only as org/name@COMMIT: refuse "
                      "a branch or tag (it may have moved) instead of using its newest recorded commit "
                      "[env: KILN_STRICT_REVISION=1]."),
]
_PARAMS = ("model", *SPEC_FLAGS, "instance_type", "consumer", "target_options", "from_env", "serving_properties", "calib_file",
           "toolchain_pins", "strict_revision")


def toolchain_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--toolchain NAME=VERSION`` (repeatable): pin a toolchain component not installed here."""
    return click.option("--toolchain", "toolchain_pins", multiple=True, metavar="NAME=VERSION",
                        help="Pin a toolchain component (e.g. neuronx-cc=2.15.128, hardware=cuda-sm90).")(f)


def _spec_decorator(options: list[Callable[..., Any]]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def command(*args: Any, **kw: Any) -> Any:
            raw = {name: kw.pop(name, None) for name in _PARAMS}
            request = SpecRequest(
                model=raw["model"],
                values={k: raw[k] for k in SPEC_FLAGS if raw[k] is not None},
                instance_type=raw["instance_type"] or None,
                consumer=raw["consumer"] or None,
                options=tuple(raw["target_options"] or ()),
                from_env=bool(raw["from_env"]),
                serving_properties=raw["serving_properties"],
                calib_file=raw["calib_file"],
                toolchain_pins=tuple(raw["toolchain_pins"] or ()),
                strict_revision=bool(raw["strict_revision"]),
            )
            return f(*args, spec=request, **kw)

        for opt in reversed([*options, toolchain_option]):
            command = opt(command)
        return command

    return decorate


def spec_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The spec flags every command accepts (or --from-env / --serving-properties instead), as ``spec=``."""
    return _spec_decorator(_OPTIONS)(f)


def spec_flag_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The spec flags without the MODEL argument (a command whose arguments are something else: `kiln rm`)."""
    return _spec_decorator(_OPTIONS[1:])(f)


# Model files at least this large are announced before they are hashed (once: the digest is memoised).
ANNOUNCE_HASH_BYTES = 64 << 20


def resolve_request(store: api.Store, request: SpecRequest) -> api.Resolution:
    """Spec flags → Resolution (model resolved, spec validated, toolchain settled).

    Hashing a large model for its tree digest the first time takes a while (13 GB for a 7B
    model): say so on stderr, with a progress bar on a terminal.
    """
    source = api.spec_from_sources(request.fields(), from_env=request.from_env,
                                   serving_properties=request.serving_properties)
    return _resolve_source(store, request, source)


def resolve_query(store: api.Store, request: SpecRequest) -> tuple[list[tuple[str, api.Resolution]], list[tuple[str, str]]]:
    """For a lookup: like :func:`resolve_request`, but an LMI configuration that names no consumer is a query
    over every consumer that reads it — ``([(consumer, resolution)], [(consumer, why it would not load it)])``.
    A closed spec is one candidate."""
    source = api.spec_from_sources(request.fields(), from_env=request.from_env,
                                   serving_properties=request.serving_properties, open_consumer=True)
    if "consumer" not in source.open_fields:
        return [(str(source.spec.option("consumer")), _resolve_source(store, request, source))], []
    candidates, refused = [], []
    for consumer, closed in api.with_each_consumer(source):
        try:
            candidates.append((consumer, _resolve_source(store, request, closed)))
        except api.KilnError as e:
            if not isinstance(e, ValueError):  # not this consumer refusing the configuration (SpecError,
                raise                          # ValidationError): the model, the store, a remote

            refused.append((consumer, str(e)))
    if not candidates:  # one line, as every error: the newest release's reason, and how to see the others'
        (newest, why), others = refused[0], len(refused) - 1
        raise api.KilnError(f"no LMI consumer loads this configuration; {newest}: {why}"
                            + (f" ({others} older releases refuse it too: name one with --consumer for its reason)"
                               if others else ""))
    return candidates, refused


def _resolve_source(store: api.Store, request: SpecRequest, source: api.SpecSource) -> api.Resolution:

    def announce(path: Path, size: int) -> None:
        if size >= ANNOUNCE_HASH_BYTES:
            click.echo(f"kiln: hashing {path.name} ({human_size(size)}) for the model's tree digest "
                       "(once: the digest is memoised)", err=True)

    memo = store.memo
    # A Hub id not here resolves from model records, the remote's too: opened only if needed.
    ctx = click.get_current_context(silent=True)
    opener = (lambda: remote(ctx)) if ctx is not None else None
    with TransferBar("hash model files") as bar:
        memo.on_hash, memo.progress = announce, bar
        try:
            res = api.resolve(source, store=store, toolchain=api.parse_toolchain_pins(request.toolchain_pins),
                              remote=opener, strict_revision=True if request.strict_revision else None)
        finally:
            memo.on_hash = memo.progress = None
    if res.model_note:  # which commit a branch meant, from a record: said on every command, --json too
        click.echo(f"kiln: note: {res.model_note}", err=True)
    return res


def layout_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--layout`` (choices: every layout some target writes) and ``--container-dir``."""
    f = click.option("--container-dir", metavar="PATH",
                     help="Where DEST will be seen by the consumer, for paths written into the layout (default: DEST; "
                          "/opt/ml/model for a Neuron --layout lmi made outside an LMI container).")(f)
    return click.option("--layout", type=_LayoutChoice([]), default="raw",
                        show_default=True, help="Arrange the files for a consumer (see README).")(f)


class _LayoutChoice(click.Choice):  # type: ignore[type-arg]
    """click.Choice of every layout, asked of the targets when first needed (help, or a value to
    check), not when the commands are defined: defining them must not import every target."""

    @property  # type: ignore[override]
    def choices(self) -> list[str]:
        return list(api.layout_names())

    @choices.setter
    def choices(self, _value: object) -> None:
        pass  # click.Choice.__init__ assigns its argument; the list is always the targets'


def key_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--key KEY``: name the exact build (a key, or a prefix of at least 12 hex digits) instead of a model and spec."""
    return click.option(
        "--key", "key", metavar="KEY",
        help="The artifact with this build key (or a prefix of at least 12 hex digits), from the store or the remote; "
             "no model is needed. Instead of MODEL and spec flags.",
    )(f)


def refuse_spec_with_key(spec: SpecRequest, key: str) -> None:
    """A UsageError naming both when ``--key`` comes with a model or spec flags: the key alone names the build."""
    given = ([f"MODEL {redact(spec.model)!r}"] if spec.model is not None else []) + spec.given_flags()
    given += ["--toolchain"] if spec.toolchain_pins else []
    if given:
        raise click.UsageError(
            f"--key {key!r} and {', '.join(given)} cannot be combined: the key names an exact build, whose model and "
            "spec it already fixes. Give --key alone, or MODEL and spec flags without --key."
        )


def link_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--link``: hard links instead of copies, with the risk stated."""
    return click.option(
        "--link", is_flag=True,
        help="Hard-link files from the store instead of copying (or cloning) them: instant and no extra space, "
             "but a write into DEST then changes the stored blob (root ignores its read-only mode) and corrupts "
             "every artifact that shares it. Use only where nothing writes into DEST.",
    )(f)


def _remote_url_given(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        set_remote_url(ctx, value)


def remote_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--remote URL`` after the subcommand (``kiln lookup … --remote URL``), as well as before it."""
    return click.option(
        "--remote", metavar="URL", expose_value=False, callback=_remote_url_given,
        help="Shared store: oci://HOST/REPOSITORY, s3://BUCKET/PREFIX[?endpoint=URL] or a path [default: the --remote before the "
             "command, else $KILN_REMOTE].",
    )(f)


def _trust_policy_given(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    if value:
        store(ctx).trust = api.load_policy(value)


def trust_policy_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--trust-policy FILE`` after the subcommand (``kiln ensure … --trust-policy p.yaml``), as well as before it."""
    return click.option(
        "--trust-policy", type=click.Path(path_type=Path), metavar="FILE", expose_value=False,
        callback=_trust_policy_given,
        help="Serve only artifacts this policy trusts [default: the --trust-policy before the command, else "
             "$KILN_TRUST_POLICY].",
    )(f)


def _sign_key_given(ctx: click.Context, param: click.Parameter, value: str | None) -> api.SigningKey | None:
    return api.load_signing_key(value) if value else None


def sign_key_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--sign-key KEY`` [env KILN_SIGN_KEY]: the command receives ``sign_key`` (a SigningKey or None)."""
    return click.option(
        "--sign-key", "sign_key", metavar="KEY", envvar="KILN_SIGN_KEY", callback=_sign_key_given,
        help="Sign with this key: an EC P-256 private key in a PEM file, or an AWS KMS key (awskms:///alias/NAME, "
             "a key ARN) [env: KILN_SIGN_KEY; an encrypted PEM's password: KILN_SIGN_KEY_PASSWORD].",
    )(f)


def remote_flag_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--remote [URL]`` for commands that act on the remote instead of the store (``ls``, ``show``, ``gc``).

    The command receives ``on_remote``: None (not given), "" (given alone: the configured
    remote) or the URL; :func:`use_remote_flag` turns it into a bool and applies the URL.
    """

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        return click.option("--remote", "on_remote", is_flag=False, flag_value="", default=None, metavar="[URL]",
                            help=help + " With URL: that remote instead of the configured one "
                                        "(--remote before the command, or $KILN_REMOTE).")(f)

    return decorate


def use_remote_flag(ctx: click.Context, value: str | None) -> bool:
    """Apply ``--remote URL`` (when a URL was given); True when the command should act on the remote."""
    if value:
        set_remote_url(ctx, value)
    return value is not None
