"""OAUTHBEARER token providers without a broker: a hook's token kept until 80% of its life
and then replaced, sync and async hooks, a bad return named, config errors one line each,
and the built-in `aws_msk_iam` provider's token (signed offline with made-up credentials)
shaped as Amazon MSK expects, with no secret in it."""

from __future__ import annotations

import asyncio
import base64
import time
from urllib.parse import parse_qs, urlparse

import pytest

from worker.cli import main
from worker.sources.kafka.config import KafkaSourceConfig
from worker.sources.kafka.oauth import RefreshingTokenProvider, TokenHookFailed
from worker.sources.kafka.security import client_kwargs


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_is_kept_until_80_percent_of_its_life_then_replaced():
    clock, calls = Clock(), []

    def hook() -> tuple[str, float]:
        calls.append(clock.now)
        return f"token-{len(calls)}", clock.now + 100

    provider = RefreshingTokenProvider(hook, "m:hook", clock)

    async def go() -> list[str]:
        tokens = [await provider.token()]
        clock.now += 79
        tokens.append(await provider.token())
        clock.now += 1  # 80 s of 100
        tokens.append(await provider.token())
        return tokens

    assert asyncio.run(go()) == ["token-1", "token-1", "token-2"]
    assert calls == [1000.0, 1080.0]
    assert "token" not in repr(provider).replace("TokenProvider", "")


def test_an_async_hook_is_awaited_and_a_bad_return_is_named():
    async def good() -> tuple[str, float]:
        return "t", time.time() + 60

    assert asyncio.run(RefreshingTokenProvider(good, "m:good").token()) == "t"
    bad = RefreshingTokenProvider(lambda: "just-a-token", "m:bad")
    with pytest.raises(TokenHookFailed, match=r"'m:bad' returned a str: it must return \(token"):
        asyncio.run(bad.token())


def test_client_settings_carry_the_provider_and_no_password():
    config = KafkaSourceConfig(
        topics=["t"], security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER",
        sasl_oauth_token_provider="tests.integration.oauth_tokens:short_lived",
    )  # fmt: skip
    kwargs = client_kwargs(config)
    assert kwargs["sasl_mechanism"] == "OAUTHBEARER"
    assert isinstance(kwargs["sasl_oauth_token_provider"], RefreshingTokenProvider)
    assert "sasl_plain_password" not in kwargs


@pytest.mark.parametrize(
    ("provider", "said"),
    [
        (None, "source.sasl_mechanism = 'OAUTHBEARER' needs source.sasl_oauth_token_provider"),
        ("no-colon", "must be 'module:callable' or 'aws_msk_iam'"),
        ("no_such_module_q:f", "cannot import 'no_such_module_q': ModuleNotFoundError"),
        ("tests.integration.oauth_tokens:nothing", "has no callable 'nothing'"),
    ],
)
def test_a_provider_that_cannot_load_is_one_config_error_line(tmp_path, capsys, provider, said):
    path = tmp_path / "w.toml"
    line = f'sasl_oauth_token_provider = "{provider}"\n' if provider else ""
    path.write_text(
        '[source]\ntopics = ["t"]\nsecurity_protocol = "SASL_PLAINTEXT"\n'
        f'sasl_mechanism = "OAUTHBEARER"\n{line}'
    )
    assert main(["check-config", "--config", str(path), "--set", "handler.target=m:f"]) == 2
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert error.startswith("config error: ") and said in error, error


def test_the_msk_iam_token_is_a_signed_kafka_connect_url_without_the_secret(monkeypatch):
    """Offline: made-up static credentials, so the signer calls nothing."""
    pytest.importorskip("aws_msk_iam_sasl_signer")
    secret = "made-up-secret-key-Zq93"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE0TEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    config = KafkaSourceConfig(
        topics=["t"], security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER",
        sasl_oauth_token_provider="aws_msk_iam",
    )  # fmt: skip
    provider = client_kwargs(config)["sasl_oauth_token_provider"]
    before = time.time()
    token = asyncio.run(provider.token())
    url = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    parsed = urlparse(url)
    query = parse_qs(parsed.query)
    assert parsed.scheme == "https" and parsed.netloc == "kafka.eu-west-1.amazonaws.com"
    assert query["Action"] == ["kafka-cluster:Connect"]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Credential"][0].startswith("AKIAEXAMPLE0TEST/")
    assert "/eu-west-1/kafka-cluster/aws4_request" in query["X-Amz-Credential"][0]
    assert len(query["X-Amz-Signature"][0]) == 64
    assert int(query["X-Amz-Expires"][0]) > 0
    assert secret not in url and secret not in token
    # kept until 80% of its life: asked again at once, the same token
    assert asyncio.run(provider.token()) == token
    assert provider._refresh_after > before


def test_msk_iam_needs_a_region(tmp_path, capsys, monkeypatch):
    pytest.importorskip("aws_msk_iam_sasl_signer")
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    path = tmp_path / "w.toml"
    path.write_text(
        '[source]\ntopics = ["t"]\nsecurity_protocol = "SASL_SSL"\n'
        'sasl_mechanism = "OAUTHBEARER"\nsasl_oauth_token_provider = "aws_msk_iam"\n'
    )
    assert main(["check-config", "--config", str(path), "--set", "handler.target=m:f"]) == 2
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert "no AWS region: set source.sasl_aws_region" in error


@pytest.mark.parametrize(
    ("result", "said"),
    [
        (("t", float("nan")), "returned a tuple"),  # NaN: `now >= nan` is never true
        (("t", True), "returned a tuple"),
        (("t", float("inf")), "returned a tuple"),
    ],
)
def test_an_expiry_that_is_not_a_finite_number_is_refused(result, said):
    provider = RefreshingTokenProvider(lambda: result, "m:odd")
    with pytest.raises(TokenHookFailed, match=said):
        asyncio.run(provider.token())


def test_a_hook_that_raises_or_hangs_is_one_bounded_line_and_holds_no_thread(monkeypatch):
    import threading

    from worker.sources.kafka import oauth

    def raising() -> tuple[str, float]:
        raise RuntimeError("secret=" + "s" * 5000)

    with pytest.raises(TokenHookFailed) as raised:
        asyncio.run(RefreshingTokenProvider(raising, "m:raising").token())
    assert str(raised.value).startswith("source.sasl_oauth_token_provider = 'm:raising' raised")
    assert len(str(raised.value)) < 300

    monkeypatch.setattr(oauth, "TOKEN_TIMEOUT_S", 0.2)
    stuck = threading.Event()
    with pytest.raises(TokenHookFailed, match=r"'m:stuck' did not return a token within 0\.2 s"):
        asyncio.run(RefreshingTokenProvider(stuck.wait, "m:stuck").token())
    hook_threads = [t for t in threading.enumerate() if t.name == "oauth token hook"]
    assert hook_threads and all(t.daemon for t in hook_threads)  # exit does not wait for it
    stuck.set()
