"""Tokens for the HTTP API: the file, its mode, hashing, 'rule-engine token create', and 'serve' itself."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from rule_engine.cli import cli
from rule_engine.server.auth import TokenFileError, Tokens, create_token, hash_token
from tests._support_deployment import GATEWAY_V1


def test_token_create_prints_the_token_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    """The printed token is accepted under its name; the file holds its hash, not the token, mode 0600."""
    path = tmp_path / "tokens.json"
    result = CliRunner().invoke(cli, ["token", "create", "ci-bot", "--tokens", str(path)])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    stored = path.read_text()
    assert token not in stored
    assert hash_token(token) in stored
    assert path.stat().st_mode & 0o777 == 0o600
    assert Tokens.load(path).name_of(token) == "ci-bot"


def test_a_second_token_keeps_the_first(tmp_path: Path) -> None:
    """Tokens are added by name; creating one again under a name replaces only that one."""
    path = tmp_path / "tokens.json"
    alice = create_token(path, "alice")
    bob = create_token(path, "bob")
    tokens = Tokens.load(path)
    assert (tokens.name_of(alice), tokens.name_of(bob)) == ("alice", "bob")
    new_alice = create_token(path, "alice")
    assert Tokens.load(path).name_of(alice) is None
    assert Tokens.load(path).name_of(new_alice) == "alice"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o666, 0o620])
def test_a_tokens_file_others_can_access_is_refused(tmp_path: Path, mode: int) -> None:
    """Group- or world-accessible: refused with the chmod that fixes it."""
    path = tmp_path / "tokens.json"
    create_token(path, "alice")
    path.chmod(mode)
    with pytest.raises(TokenFileError, match="chmod 600"):
        Tokens.load(path)


def test_serve_refuses_an_unsafe_tokens_file_with_one_line(tmp_path: Path) -> None:
    """The CLI says what is wrong in one error line, before it binds anything."""
    path = tmp_path / "tokens.json"
    create_token(path, "alice")
    path.chmod(0o644)
    result = CliRunner().invoke(cli, ["--store", "memory://", "serve", "--tokens", str(path)])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert "chmod 600" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "content",
    ["not json", "[]", '{"tokens": []}', '{"tokens": {"a b": "sha256:00"}}', '{"tokens": {"a": "md5:00"}}'],
)
def test_malformed_tokens_files_are_refused(tmp_path: Path, content: str) -> None:
    """Anything but names mapped to sha256 hashes is refused."""
    path = tmp_path / "tokens.json"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(TokenFileError):
        Tokens.load(path)


def test_a_missing_tokens_file_names_the_command_that_makes_one(tmp_path: Path) -> None:
    """The error hints at 'rule-engine token create'."""
    with pytest.raises(TokenFileError, match="rule-engine token create"):
        Tokens.load(tmp_path / "absent.json")


@given(st.text(min_size=1, max_size=80))
def test_no_other_token_matches(other: str) -> None:
    """Only the exact token maps to its name; any other string maps to nothing."""
    secret = "re_the-real-one"
    tokens = Tokens({"alice": hash_token(secret), "bob": hash_token(secret + "b")})
    assert tokens.name_of(other) == ({secret: "alice", secret + "b": "bob"}.get(other))


def test_bad_token_names_are_refused(tmp_path: Path) -> None:
    """Names are audit actors: short, no spaces or control characters."""
    with pytest.raises(TokenFileError):
        create_token(tmp_path / "t.json", "bad name\n")


CLI = [sys.executable, "-c", "from rule_engine.cli import main; main()"]


def _http(method: str, url: str, body: object = None, token: str | None = None) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _cli(cwd: Path, env: dict[str, str], *args: str) -> str:
    """Run the CLI in ``cwd`` (bounded to 60 s); its stdout."""
    done = subprocess.run([*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_serve_runs_with_one_command_on_the_sqlite_default(tmp_path: Path) -> None:
    """'rule-engine serve' in a fresh directory: loopback, the default SQLite store, a token, a deploy."""
    runner_env = {**os.environ, "RULE_ENGINE_STORE": ""}
    token = _cli(tmp_path, runner_env, "token", "create", "ops")
    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [*CLI, "serve", "--port", str(port)], cwd=tmp_path, env=runner_env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:  # bounded: the server starts within 30 s or the test fails
            try:
                if _http("GET", base + "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "serve did not start"
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        bundle = json.loads(GATEWAY_V1.read_text())
        status, answer = _http("POST", base + "/api/v1/deploy", {"bundle": bundle}, token)
        assert status == 201, answer
        assert _http("GET", base + "/readyz") == (
            200,
            {"ready": True, "deployments": {"default": {"active_version": answer["version_id"], "revision": 2}}},
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    assert (tmp_path / ".rule-engine" / "state.db").exists()
    audit = _cli(tmp_path, runner_env, "history", "--json")
    assert {e["actor"] for e in json.loads(audit)["audit"]} == {"ops"}


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:hunter2@db:5432/rules", "postgresql://app:***@db:5432/rules"),
        ("postgresql://app@db/rules", "postgresql://app@db/rules"),
        ("sqlite:///.rule-engine/state.db", "sqlite:///.rule-engine/state.db"),
        ("memory://", "memory://"),
    ],
)
def test_a_store_password_is_never_shown(url: str, shown: str) -> None:
    """The status the API serves names the store without its password."""
    from rule_engine.observability.views import redact_url

    assert redact_url(url) == shown
