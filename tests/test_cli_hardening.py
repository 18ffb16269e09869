"""CLI defects found by operators and attackers (D9, D24, D27, D28 and the CLI debris of issue 9), each pinned."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import given
from hypothesis import strategies as st

from rule_engine import Canary, DeploymentManager
from rule_engine.cli import CliContext, cli
from rule_engine.cli._common import os_account
from rule_engine.cli.hints import PYTHON_TO_CLI, cli_text
from rule_engine.cli.output import WIDTH, clean, echo
from rule_engine.clock import iso

ROOT = Path(__file__).resolve().parent.parent
BUNDLES = ROOT / "bundles"
V1, V2 = (str(BUNDLES / f"gateway-{name}.json") for name in ("v1", "v2"))
SCRIPT = Path(sys.executable).parent / "rule-engine"
ESC_TITLE = "\x1b]0;pwned\x07"
RLO = "\u202e"
LOGIN = '{"agent_id": "api_gateway", "flow_id": "login", "geo": {"country": "KP"}, "user": {"id": "u-1"}}'
FAR_FUTURE = 253402300800.0 + 86400  # 10000-01-02: beyond what ISO 8601 (datetime) renders


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def run(store_url: str) -> Any:
    def invoke(*args: str, obj: CliContext | None = None, env: dict[str, str | None] | None = None) -> Result:
        environment: dict[str, str | None] = {"RULE_ENGINE_TRUST": None, **(env or {})}
        return CliRunner().invoke(cli, ["--store", store_url, *args], obj=obj, env=environment)

    return invoke


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def ok_json(result: Result) -> Any:
    return json.loads(ok(result).stdout)


def _versions(history: Any) -> Any:
    """A ``history --json`` document without its verdicts' ``last_check`` (the time it was asked)."""
    if isinstance(history, dict):
        return {k: _versions(v) for k, v in history.items() if k != "last_check"}
    if isinstance(history, list):
        return [_versions(v) for v in history]
    return history


def one_line_error(result: Result, *fragments: str, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def nothing_staged(run: Any) -> None:
    """Nothing was committed: the store was never created (a refused write creates none), or it is empty."""
    history = run("history", "--json")
    if history.exit_code == 1 and "no store at" in history.stderr:
        return
    assert ok_json(history) == {"versions": [], "audit": []}


# --- D27: what a terminal would act on is escaped in human output -----------------------------------


def test_clean_escapes_controls_bidi_and_surrogates_and_keeps_the_rest() -> None:
    """ESC, BEL, bidi overrides, zero-width and lone surrogates become visible escapes; letters stay."""
    assert clean(f"a{ESC_TITLE}b") == "a\\x1b]0;pwned\\x07b"
    assert clean(f"{RLO}evil\u2066x\u200by") == "\\u202eevil\\u2066x\\u200by"
    assert clean("\ud800") == "\\ud800"
    assert clean("tab\tnew\nline\x85") == "tab\\x09new\\x0aline\\x85"
    assert clean("Zürich ✓ 東京 😀") == "Zürich ✓ 東京 😀"


@given(st.text(alphabet=st.characters(codec=None, exclude_categories=())))
def test_clean_leaves_nothing_a_terminal_acts_on_and_changes_nothing_else(text: str) -> None:
    """For any text: no control, format, surrogate or separator character survives; safe text is unchanged."""
    unsafe = {"Cc", "Cf", "Cs", "Zl", "Zp"}
    cleaned = clean(text)
    assert not [c for c in cleaned if unicodedata.category(c) in unsafe]
    if not any(unicodedata.category(c) in unsafe for c in text):
        assert cleaned == text


def _bundle_with_reason(tmp_path: Path, reason: str) -> Path:
    data = json.loads(Path(V1).read_text(encoding="utf-8"))
    for rule in data["rules"]:
        rule["then"]["reason"] = reason
    data["tests"] = []
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_escape_codes_in_reasons_and_actors_never_reach_the_terminal(run: Any, tmp_path: Path) -> None:
    """Rule reasons (evaluate), --by and --reason (history, status) print escaped, never raw ESC or RLO."""
    ok(run("deploy", V1, "--by", f"eve{ESC_TITLE}"))
    ok(run("deploy", str(_bundle_with_reason(tmp_path, f"denied{ESC_TITLE}{RLO}")), "--by", f"eve{RLO}"))
    ok(run("rollback", "--reason", f"oops{ESC_TITLE}"))
    outputs = [
        run("evaluate", LOGIN).stdout,
        run("history").stdout,
        run("status").stdout,
    ]
    ok(run("deploy", str(_bundle_with_reason(tmp_path, f"denied{ESC_TITLE}{RLO}"))))
    outputs.append(ok(run("evaluate", LOGIN)).stdout)
    text = "".join(outputs)
    for raw in ("\x1b", "\x07", RLO):
        assert raw not in text
    for shown in ("eve\\x1b]0;pwned\\x07", "oops\\x1b]0;pwned\\x07"):
        assert shown in text
    assert "denied\\x1b]0;pwned\\x07\\u202e" in text


def test_escape_codes_in_error_lines_are_escaped(run: Any, tmp_path: Path) -> None:
    """An error line naming hostile input (here a bundle file's name) escapes it too."""
    hostile = tmp_path / f"bad{ESC_TITLE}.json"
    hostile.write_text("{not json", encoding="utf-8")
    result = run("validate", str(hostile))
    line = one_line_error(result)
    assert "\x1b" not in line
    assert "bad\\x1b]0;pwned\\x07.json" in line
    assert "\x1b" not in result.stdout


# --- D28: smaller CLI defects -----------------------------------------------------------------------


def test_advance_says_when_a_stage_that_is_not_due_will_be(run: Any) -> None:
    """advance before the stage's time: 'not due yet', with the due time, not 'no verdict yet'."""
    ok(run("deploy", V1))
    ok(run("deploy", V2, "--stages", "10,50,100", "--stage-duration", "600"))
    text = " ".join(ok(run("advance")).stdout.split())
    assert text.startswith("not advanced: stage 1/3 (10%) is not due yet; it is due at ")
    assert "no verdict yet" not in text.partition("(")[0]
    assert any(f"in {seconds}s" in text for seconds in (598, 599, 600))  # due 600s after the deploy


def test_error_hints_name_commands_not_python_calls(run: Any) -> None:
    """Refusals during a canary or an A/B test say which rule-engine command to run."""
    ok(run("deploy", V1))
    ok(run("deploy", V2, "--strategy", "canary"))
    busy = one_line_error(run("deploy", V1), "'rule-engine promote'", "'rule-engine rollback'", "--supersede")
    conclude = one_line_error(run("conclude", "x"), "'rule-engine advance'", "'rule-engine promote'")
    ok(run("rollback"))
    ok(run("deploy", V2, "--strategy", "ab-test"))
    promote = one_line_error(run("promote"), "'rule-engine conclude WINNER'")
    for line in (busy, conclude, promote):
        assert "()" not in line
        assert "supersede=True" not in line


def test_every_python_spelling_has_a_command_and_none_survives_translation() -> None:
    """The translation table leaves no Python call behind in any message it knows."""
    for python, command in PYTHON_TO_CLI:
        said = cli_text(f"x {python} y")
        assert "()" not in said, python
        assert "=True" not in said, python
        assert "rule-engine" in command or "--supersede" in command, command


def test_history_into_a_closed_pipe_exits_0_quietly(tmp_path: Path, store_url: str) -> None:
    """rule-engine history | head -1: the reader goes away; exit 0 and nothing on stderr (click said 1)."""
    ok(CliRunner().invoke(cli, ["--store", store_url, "deploy", V1]))
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line is written
    try:
        result = subprocess.run(
            [str(SCRIPT), "--store", store_url, "history"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write)
    assert (result.returncode, result.stderr) == (0, "")


def test_controller_ends_when_its_reader_goes_away(store_url: str) -> None:
    """rule-engine controller | head -1: once the reader has closed the pipe, the controller exits (0)."""
    ok(CliRunner().invoke(cli, ["--store", store_url, "deploy", V1]))
    proc = subprocess.Popen(
        [str(SCRIPT), "--store", store_url, "controller", "--interval", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("controller on ")
        proc.stdout.close()
        assert proc.wait(timeout=60) == 0
        assert proc.stderr is not None
        assert proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def test_keygen_without_the_signing_extra_says_what_to_install(
    run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without cryptography, keygen --alg ed25519 names the extra to install (not 'unexpected ModuleNotFoundError')."""
    for name in [m for m in sys.modules if m == "cryptography" or m.startswith("cryptography.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "cryptography", None)
    line = one_line_error(run("keygen", "--key-id", "k", "--out", str(tmp_path / "keys")), "rule_engine[signing]")
    assert "unexpected" not in line


def test_rollback_without_a_target_lists_the_retained_versions(run: Any) -> None:
    """With several versions kept but none to return to, the error says so and lists them."""
    first = ok_json(run("deploy", V1, "--json"))["version_id"]
    second = ok_json(run("deploy", V2, "--strategy", "canary", "--json"))["version_id"]
    ok(run("promote"))
    ok(run("rollback"))  # back to the first; the second is rolled back
    line = one_line_error(run("rollback"), "no rollback target", second)
    assert first in line
    assert "only version" not in line


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--stage-duration", "inf"], "'--stage-duration': inf: expected a finite number"),
        (["--stage-duration", "nan"], "expected a finite number"),
        (["--test-duration", "inf"], "'--test-duration'"),
        (["--stages", "10,,100"], "got '10,,100'"),
        (["--stages", "10,50,"], "got '10,50,'"),
        (["--stages", "10,inf"], "got '10,inf'"),
    ],
)
def test_strategy_options_that_are_not_numbers_are_refused_clearly(run: Any, args: list[str], fragment: str) -> None:
    """inf, nan and empty stages are usage errors naming the option; nothing is staged."""
    one_line_error(run("deploy", V1, *args), fragment, code=2)
    nothing_staged(run)


def test_controller_once_does_not_claim_to_tick_every_second(run: Any) -> None:
    """controller --once says it ticks once."""
    ok(run("deploy", V1))
    first = ok(run("controller", "--once")).stdout.splitlines()[0]
    assert first.endswith("one tick")
    assert "every" not in first


def test_human_output_fits_80_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every human line of every command stays within 80 columns on the example bundles."""
    monkeypatch.chdir(tmp_path)
    invoke = CliRunner().invoke
    base = ["--store", "sqlite:///s.db"]
    outputs = [
        invoke(cli, [*base, "validate", V1, V2]),
        invoke(cli, [*base, "deploy", V1]),
        invoke(cli, [*base, "deploy", V2, "--stages", "10,50,100"]),
        invoke(cli, [*base, "status"]),
        invoke(cli, [*base, "advance"]),
        invoke(cli, [*base, "controller", "--once"]),
        invoke(cli, [*base, "evaluate", LOGIN]),
        invoke(cli, [*base, "diff", V1, V2]),
        invoke(cli, [*base, "rollback", "--reason", "numbers look wrong after the change to the login flow"]),
        invoke(cli, [*base, "history"]),
    ]
    for result in outputs:
        assert result.exit_code == 0, result.output
        for line in result.stdout.splitlines():
            assert len(line) <= WIDTH, line


def test_echo_wraps_long_lines_with_a_hanging_indent(capsys: pytest.CaptureFixture[str]) -> None:
    """A long line is wrapped at spaces, later lines indented; a word too long to fit is left whole."""
    echo("  " + " ".join(["word"] * 40))
    echo("x " + "y" * 100)
    lines = capsys.readouterr().out.splitlines()
    assert all(len(line) <= WIDTH for line in lines[:-1])
    assert lines[0].startswith("  word")
    assert all(line.startswith("      word") for line in lines[1:-1])
    assert lines[-1] == "x " + "y" * 100


def test_evaluate_with_nothing_deployed_fails_clearly(run: Any) -> None:
    """evaluate with nothing active (a missing store, or only a scheduled version): exit 1, say what to run."""
    one_line_error(run("evaluate", LOGIN), "no store at", "`rule-engine deploy` creates one")
    ok(run("deploy", V1, "--at", "2099-01-01T00:00:00+00:00"))
    one_line_error(run("evaluate", LOGIN), "nothing is deployed", "'rule-engine deploy BUNDLE'")


# --- D9: times that cannot be rendered are refused, and never break reads ------------------------------


@pytest.mark.parametrize("at", ["253402300800", "1e20", "inf", "-5", "9999999999999999999999"])
def test_deploy_at_out_of_range_is_refused_before_anything_is_committed(run: Any, at: str) -> None:
    """--at past year 9999 (or not a time) is a usage error; nothing is staged, history still reads."""
    one_line_error(run("deploy", V2, "--at", at), "--at", code=2)
    nothing_staged(run)


class _FarClock:
    """A host clock far off: year 10000."""

    def now(self) -> float:
        return FAR_FUTURE


def test_reads_never_crash_on_times_the_store_cannot_render(run: Any, store_url: str) -> None:
    """A store written by a host with a far-off clock: status and history (text and JSON) show raw seconds."""
    manager = DeploymentManager.open(store_url, follow=False, clock=_FarClock())
    try:
        manager.activate_deployment(manager.prepare_deployment(V1, deployed_by="skewed"))
        manager.activate_deployment(manager.prepare_deployment(V2, Canary([10, 100], 60), deployed_by="skewed"))
    finally:
        manager.close()
    text = ok(run("history")).stdout
    assert repr(FAR_FUTURE) in text
    data = ok_json(run("history", "--json"))
    far = iso(FAR_FUTURE)  # a time ISO 8601 cannot render reads as its unix seconds, still a string field
    assert far == f"{FAR_FUTURE!r} (unix seconds)"
    assert data["versions"][0]["created_at"] == far
    assert all(entry["at"] == FAR_FUTURE and entry["time"] == far for entry in data["audit"])
    ok(run("status"))
    rollout = ok_json(run("status", "--json"))["rollout"]
    assert (rollout["stage_started_at"], rollout["next_step_at"]) == (far, iso(FAR_FUTURE + 60))
    ok(run("advance"))


# --- issue 9 debris: a preset manager, trust enforced by the manager, signer and OS account shown ---------


def test_a_preset_manager_is_not_silently_reconfigured(store_url: str) -> None:
    """CliContext.open refuses keywords that would configure a preset manager differently (it ignored them)."""
    manager = DeploymentManager.open(store_url, follow=False)
    try:
        context = CliContext(manager=manager)
        assert context.open() is manager
        assert context.open(auto_rollback=manager.config.auto_rollback) is manager
        with pytest.raises(Exception, match="auto_rollback"):
            context.open(auto_rollback=not manager.config.auto_rollback)
    finally:
        manager.close()


def _hmac_trust(run: Any, tmp_path: Path) -> tuple[str, str]:
    keys = ok_json(run("keygen", "--alg", "hmac-sha256", "--key-id", "ci", "--out", str(tmp_path / "keys"), "--json"))
    trust = tmp_path / "trust.json"
    trust.write_text(json.dumps(keys["trust"]), encoding="utf-8")
    trust.chmod(0o600)
    return str(trust), keys["private_key_file"]


def _signed_copy(run: Any, tmp_path: Path, source: str, key: str) -> str:
    path = tmp_path / Path(source).name
    path.write_text(Path(source).read_text(encoding="utf-8"), encoding="utf-8")
    ok(run("sign", str(path), "--key", key))
    return str(path)


def test_deploy_names_the_signer_and_the_os_account(run: Any, tmp_path: Path) -> None:
    """A trusted deploy says who signed it (alg:key id), and the JSON records the OS account with --by."""
    trust, key = _hmac_trust(run, tmp_path)
    signed = _signed_copy(run, tmp_path, V1, key)
    data = ok_json(run("--trust", trust, "deploy", signed, "--by", "alice", "--json"))
    assert (data["signed_by"], data["by"], data["os_account"]) == ("hmac-sha256:ci", "alice", os_account())
    text = ok(run("--trust", trust, "deploy", signed)).stdout
    assert "signed:   by hmac-sha256:ci (trusted)" in text


def test_an_older_signed_bundle_is_refused_with_refuse_downgrade(run: Any, tmp_path: Path) -> None:
    """D24: by default an older signed bundle deploys; with --refuse-downgrade it is refused, nothing staged."""
    trust, key = _hmac_trust(run, tmp_path)
    old, new = _signed_copy(run, tmp_path, V1, key), _signed_copy(run, tmp_path, V2, key)
    ok(run("--trust", trust, "deploy", new))
    before = _versions(ok_json(run("history", "--json")))
    one_line_error(run("--trust", trust, "deploy", old, "--refuse-downgrade"), "downgrade refused", "1.0.0", "2.0.0")
    assert _versions(ok_json(run("history", "--json"))) == before
    ok(run("--trust", trust, "deploy", old))  # documented default: allowed
    one_line_error(run("deploy", old, "--refuse-downgrade"), "needs a trust policy", code=2)


def test_an_untrusted_bundle_is_refused_by_the_manager_with_a_clear_line(run: Any, tmp_path: Path) -> None:
    """With --trust, an unsigned bundle is refused in one line naming the file; nothing staged."""
    trust, _ = _hmac_trust(run, tmp_path)
    line = one_line_error(run("--trust", trust, "deploy", V1), "unsigned bundle")
    assert line.startswith(f"error: {V1}: ")
    nothing_staged(run)


def test_a_world_writable_trust_file_fails_the_command_with_the_chmod_fix(run: Any, tmp_path: Path) -> None:
    """D23 from the CLI: deploy --trust with a 0666 trust file is one line naming the file and the fix."""
    trust, key = _hmac_trust(run, tmp_path)
    signed = _signed_copy(run, tmp_path, V1, key)
    Path(trust).chmod(0o666)
    one_line_error(run("--trust", trust, "deploy", signed), trust, "writable by group or others", "chmod go-w")
    Path(trust).chmod(0o640)
    one_line_error(run("--trust", trust, "validate", signed), "holds HMAC secrets", f"chmod 600 {trust}")
    nothing_staged(run)


def test_sign_refuses_a_key_file_others_may_read(run: Any, tmp_path: Path) -> None:
    """A private key file readable by group or others is refused by sign, which writes no signature."""
    _, key = _hmac_trust(run, tmp_path)
    bundle = tmp_path / "b.json"
    bundle.write_text(Path(V1).read_text(encoding="utf-8"), encoding="utf-8")
    Path(key).chmod(0o644)
    one_line_error(run("sign", str(bundle), "--key", key), "key file", f"chmod 600 {key}")
    assert not (tmp_path / "b.json.sig").exists()
