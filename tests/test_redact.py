"""kiln._redact: every URL credential form users write is replaced, nothing else is changed."""

from __future__ import annotations

import pytest

from kiln._redact import redact, redact_args

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"  # AWS secret keys are base64: '/' and '+'


@pytest.mark.parametrize("text", [
    f"s3://b/p?endpoint=http://AKIAEXAMPLE:{SECRET}@127.0.0.1:9000&region=us-east-1",
    f"s3://b/p at http://AKIAEXAMPLE:{SECRET}@127.0.0.1:1",  # describe() of the decoded endpoint
    "s3://b/p?endpoint=http%3A%2F%2FAKIAEXAMPLE%3AwJalrXUtnFEMI%2FK7MDENG%40127.0.0.1%3A9000",
    "s3://b/p?endpoint=http%253A%252F%252FAKIAEXAMPLE%253AwJalrXUtnFEMI%252FK7MDENG%2540host",
    f"Custom endpoint `http://AKIAEXAMPLE:{SECRET}@h:1` was not a valid URI",  # botocore's words
    f"http://AKIAEXAMPLE:{SECRET}#?x@host/path",
    f"--remote=s3://b/p?secret={SECRET}&profile=dev",
    f"https://h/o?X-Amz-Signature={SECRET}&X-Amz-Credential=AKIAEXAMPLE%2F20261201",
])
def test_credentials_are_redacted(text: str) -> None:
    out = redact(text)
    assert "AKIAEXAMPLE" not in out and "wJalrXUtnFEMI" not in out and "K7MDENG" not in out, out
    assert "***" in out


@pytest.mark.parametrize("text", [
    "s3://bucket/prefix", "file:///tmp/kiln-remote", "s3://b/p?endpoint=http://127.0.0.1:9000&region=x",
    "kiln: error: cannot reach http://127.0.0.1:9000", "n_positions=4096", "mail me at a@b.com",
    "option.tensor_parallel_degree=8",
])
def test_other_text_is_unchanged(text: str) -> None:
    assert redact(text) == text


def test_each_argument_of_a_command_line() -> None:
    argv = ["kiln", "--remote", f"s3://b/p?endpoint=http://AK:{SECRET}@h:1", "build", "org/m"]
    assert redact_args(argv) == ["kiln", "--remote", "s3://b/p?endpoint=http://***@h:1", "build", "org/m"]
