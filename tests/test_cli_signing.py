"""The CLI side of signed bundles: keygen, sign, and --trust refusing what is unsigned, tampered or untrusted."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from rule_engine.cli import cli

BUNDLES = Path(__file__).resolve().parent.parent / "bundles"


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """A fresh SQLite store in the test's temporary directory."""
    return f"sqlite:///{tmp_path}/s.db"


@pytest.fixture
def run(store_url: str) -> Any:
    """Invoke the CLI in-process on the test's store, with $RULE_ENGINE_TRUST unset unless given."""

    def invoke(*args: str, env: dict[str, str | None] | None = None) -> Result:
        environment: dict[str, str | None] = {"RULE_ENGINE_TRUST": None, **(env or {})}
        return CliRunner().invoke(cli, ["--store", store_url, *args], env=environment)

    return invoke


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A copy of gateway-v1.json in the temporary directory (so BUNDLE.sig lands there)."""
    path = tmp_path / "gateway-v1.json"
    shutil.copy(BUNDLES / "gateway-v1.json", path)
    return path


def ok_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_one_line_error(result: Result, *fragments: str) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def keygen(run: Any, tmp_path: Path, alg: str, key_id: str) -> dict[str, Any]:
    data: dict[str, Any] = ok_json(
        run("keygen", "--alg", alg, "--key-id", key_id, "--out", str(tmp_path / "keys"), "--json")
    )
    return data


def trust_file(tmp_path: Path, *entries: dict[str, Any], name: str = "trust.json") -> str:
    """A trust file merging keygen's trust entries."""
    merged: dict[str, dict[str, str]] = {}
    for entry in entries:
        for alg, keys in entry["trust"].items():
            merged.setdefault(alg, {}).update(keys)
    path = tmp_path / name
    path.write_text(json.dumps(merged), encoding="utf-8")
    path.chmod(0o600)  # it may hold HMAC secrets: readable by others, it is refused
    return str(path)


def nothing_staged(run: Any) -> None:
    """Nothing was committed: the store was never created (a refused write creates none), or it is empty."""
    history = run("history", "--json")
    if history.exit_code == 1 and "no store at" in history.stderr:
        return
    assert ok_json(history) == {"versions": [], "audit": []}


def tamper(path: Path) -> None:
    """Change one rule's decision in the bundle file."""
    data = json.loads(path.read_text(encoding="utf-8"))
    rule = data["rules"][0]
    rule["then"]["decision"] = "allow" if rule["then"]["decision"] != "allow" else "deny"
    data["tests"] = []
    path.write_text(json.dumps(data), encoding="utf-8")


# --- keygen -----------------------------------------------------------------------------------------


def test_keygen_ed25519_writes_a_private_key_0600_and_a_public_key(run: Any, tmp_path: Path) -> None:
    """keygen --alg ed25519 writes ID.key (mode 0600) and ID.pub, and prints the public key's trust entry."""
    data = keygen(run, tmp_path, "ed25519", "release-2026")
    private, public = Path(data["private_key_file"]), Path(data["public_key_file"])
    assert (private.name, public.name) == ("release-2026.key", "release-2026.pub")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    pub = json.loads(public.read_text())
    assert pub["alg"] == "ed25519"
    assert data["trust"] == {"ed25519": {"release-2026": pub["public_key"]}}
    assert "private_key" not in pub
    assert json.loads(private.read_text())["private_key"] != pub["public_key"]


def test_keygen_hmac_writes_only_the_secret_0600(run: Any, tmp_path: Path) -> None:
    """keygen --alg hmac-sha256 writes one 0600 file holding the secret, the same one as in the trust entry."""
    data = keygen(run, tmp_path, "hmac-sha256", "ci")
    private = Path(data["private_key_file"])
    assert data["public_key_file"] is None
    assert sorted(p.name for p in private.parent.iterdir()) == ["ci.key"]
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert data["trust"] == {"hmac-sha256": {"ci": json.loads(private.read_text())["secret"]}}


def test_keygen_refuses_to_overwrite_a_key(run: Any, tmp_path: Path) -> None:
    """A second keygen with the same id and directory fails in one line and leaves the first key intact."""
    first = keygen(run, tmp_path, "ed25519", "k1")
    before = Path(first["private_key_file"]).read_bytes()
    result = run("keygen", "--alg", "ed25519", "--key-id", "k1", "--out", str(tmp_path / "keys"))
    assert_one_line_error(result, "already exists", "refusing to overwrite")
    assert Path(first["private_key_file"]).read_bytes() == before


# --- sign and deploy ------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ed25519", "hmac-sha256"])
def test_signed_bundle_deploys_with_trust(run: Any, tmp_path: Path, bundle: Path, alg: str) -> None:
    """sign writes BUNDLE.sig naming key and digest; deploy --trust then stages and activates the bundle."""
    key = keygen(run, tmp_path, alg, "release")
    signed = ok_json(run("sign", str(bundle), "--key", key["private_key_file"], "--json"))
    assert Path(signed["signature_file"]) == tmp_path / "gateway-v1.json.sig"
    assert (signed["alg"], signed["key_id"]) == (alg, "release")
    validated = ok_json(run("validate", str(bundle), "--json"))
    assert signed["digest"] == validated["bundles"][0]["digest"]
    deployed = ok_json(run("--trust", trust_file(tmp_path, key), "deploy", str(bundle), "--json"))
    assert deployed["state"] == "active"
    status = ok_json(run("status", "--json"))
    assert status["active_version"] == deployed["version_id"]


def test_deploy_of_an_unsigned_bundle_with_trust_is_refused(run: Any, tmp_path: Path, bundle: Path) -> None:
    """Unsigned + --trust: one 'unsigned bundle' line, exit 1, nothing staged."""
    trust = trust_file(tmp_path, keygen(run, tmp_path, "ed25519", "release"))
    line = assert_one_line_error(run("--trust", trust, "deploy", str(bundle)), "unsigned bundle gateway-access@1.0.0")
    assert str(bundle) in line
    nothing_staged(run)


def test_trust_from_the_environment_variable(run: Any, tmp_path: Path, bundle: Path) -> None:
    """$RULE_ENGINE_TRUST works like --trust."""
    trust = trust_file(tmp_path, keygen(run, tmp_path, "ed25519", "release"))
    assert_one_line_error(run("deploy", str(bundle), env={"RULE_ENGINE_TRUST": trust}), "unsigned bundle")
    nothing_staged(run)


def test_deploy_of_a_tampered_bundle_is_refused_naming_the_digest(run: Any, tmp_path: Path, bundle: Path) -> None:
    """One rule edited after signing: refused as a digest mismatch, nothing staged; the signed original deploys."""
    key = keygen(run, tmp_path, "ed25519", "release")
    trust = trust_file(tmp_path, key)
    assert run("sign", str(bundle), "--key", key["private_key_file"]).exit_code == 0
    original = bundle.read_text(encoding="utf-8")
    tamper(bundle)
    assert_one_line_error(run("--trust", trust, "deploy", str(bundle)), "digest mismatch", "changed after signing")
    nothing_staged(run)
    bundle.write_text(original, encoding="utf-8")
    assert run("--trust", trust, "deploy", str(bundle)).exit_code == 0


def test_forged_digest_is_refused_as_a_bad_signature(run: Any, tmp_path: Path, bundle: Path) -> None:
    """Tampering and rewriting the digest in BUNDLE.sig: refused as a bad signature."""
    key = keygen(run, tmp_path, "ed25519", "release")
    trust = trust_file(tmp_path, key)
    sig = Path(ok_json(run("sign", str(bundle), "--key", key["private_key_file"], "--json"))["signature_file"])
    tamper(bundle)
    tampered_digest = ok_json(run("validate", str(bundle), "--json"))["bundles"][0]["digest"]
    sig.write_text(json.dumps({**json.loads(sig.read_text()), "digest": tampered_digest}), encoding="utf-8")
    assert_one_line_error(run("--trust", trust, "deploy", str(bundle)), "bad signature", "'release'")
    nothing_staged(run)


def test_signature_by_an_untrusted_key_is_refused(run: Any, tmp_path: Path, bundle: Path) -> None:
    """Signed by a key the trust file does not hold: refused naming the key id and the trusted ones."""
    trusted = keygen(run, tmp_path, "ed25519", "release")
    rogue = keygen(run, tmp_path, "ed25519", "rogue")
    assert run("sign", str(bundle), "--key", rogue["private_key_file"]).exit_code == 0
    result = run("--trust", trust_file(tmp_path, trusted), "deploy", str(bundle))
    assert_one_line_error(result, "unknown key id ed25519:'rogue'", "trusted keys: ed25519:release")
    nothing_staged(run)


def test_same_key_id_with_another_key_is_refused(run: Any, tmp_path: Path, bundle: Path) -> None:
    """A different key under the trusted id (another keygen elsewhere) is refused as a bad signature."""
    trusted = keygen(run, tmp_path, "hmac-sha256", "ci")
    impostor = ok_json(
        run("keygen", "--alg", "hmac-sha256", "--key-id", "ci", "--out", str(tmp_path / "other"), "--json")
    )
    assert run("sign", str(bundle), "--key", impostor["private_key_file"]).exit_code == 0
    assert_one_line_error(run("--trust", trust_file(tmp_path, trusted), "deploy", str(bundle)), "bad signature")
    nothing_staged(run)


def test_without_trust_signatures_are_not_required(run: Any, bundle: Path) -> None:
    """No --trust and no $RULE_ENGINE_TRUST: an unsigned bundle deploys as before."""
    assert ok_json(run("deploy", str(bundle), "--json"))["state"] == "active"


# --- validate --------------------------------------------------------------------------------------


def test_validate_with_trust_reports_signature_status(run: Any, tmp_path: Path, bundle: Path) -> None:
    """validate --trust: trusted signatures reported OK with their key; an unsigned bundle fails in one line."""
    key = keygen(run, tmp_path, "ed25519", "release")
    trust = trust_file(tmp_path, key)
    assert run("sign", str(bundle), "--key", key["private_key_file"]).exit_code == 0
    unsigned = str(BUNDLES / "gateway-v2.json")
    data = json.loads(run("--trust", trust, "validate", str(bundle), unsigned, "--json").stdout)
    assert [b["signature"] for b in data["bundles"]] == [
        {"status": "trusted", "alg": "ed25519", "key_id": "release"},
        {"status": "unsigned", "alg": None, "key_id": None},
    ]
    assert [b["ok"] for b in data["bundles"]] == [True, False]
    assert data["bundles"][1]["problems"][0]["path"] == "signature"
    result = run("--trust", trust, "validate", str(bundle), unsigned)
    assert "signed by ed25519:release" in result.stdout
    assert_one_line_error(result, "1 of 2 bundles invalid", "unsigned bundle")
    tamper(bundle)
    refused = json.loads(run("--trust", trust, "validate", str(bundle), "--json").stdout)["bundles"][0]
    assert refused["signature"]["status"] == "refused"
    assert refused["problems"][0]["message"].startswith("digest mismatch")


def test_validate_without_trust_does_not_check_signatures(run: Any, bundle: Path) -> None:
    """Without --trust, validate accepts an unsigned bundle and reports no signature field."""
    data = ok_json(run("validate", str(bundle), "--json"))
    assert data["ok"] is True
    assert "signature" not in data["bundles"][0]


# --- bad inputs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (None, "cannot read it"),
        ("{not json", "not JSON"),
        ("[]", "expected a JSON object"),
        ('{"hmac": {"ci": "AAAA"}}', "unknown sections ['hmac']"),
        ('{"ed25519": {"k": "***"}}', "not valid base64"),
        ('{"ed25519": {"k": "AAAA"}}', "a public key is 32 bytes"),
        ('{"hmac-sha256": {"ci": "c2hvcnQ="}}', "at least 32 bytes"),
        ("{}", "at least one trusted key"),
    ],
)
def test_bad_trust_file_is_one_line(
    run: Any, tmp_path: Path, bundle: Path, store_url: str, content: str | None, why: str
) -> None:
    """A missing or malformed trust file: one line naming the file and why, exit 1, no store touched."""
    path = tmp_path / "trust.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    for command in (["deploy", str(bundle)], ["validate", str(bundle)]):
        assert_one_line_error(run("--trust", str(path), *command), "trust file", str(path), why)
    assert not (tmp_path / "s.db").exists()


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("nope", "not JSON"),
        ('{"alg": "ed25519", "key_id": "k", "public_key": "AAAA"}', "this is a public key"),
        ('{"alg": "hmac-sha256", "key_id": "k", "secret": "c2hvcnQ="}', "at least 32 bytes"),
    ],
)
def test_bad_key_file_is_one_line_and_writes_no_signature(
    run: Any, tmp_path: Path, bundle: Path, content: str, why: str
) -> None:
    """sign with a malformed key file fails in one line and writes no BUNDLE.sig."""
    key = tmp_path / "bad.key"
    key.write_text(content, encoding="utf-8")
    assert_one_line_error(run("sign", str(bundle), "--key", str(key)), "key file", why)
    assert not (tmp_path / "gateway-v1.json.sig").exists()


def test_malformed_signature_file_is_refused(run: Any, tmp_path: Path, bundle: Path) -> None:
    """A BUNDLE.sig that is not JSON is refused in one line with --trust; nothing staged."""
    trust = trust_file(tmp_path, keygen(run, tmp_path, "ed25519", "release"))
    (tmp_path / "gateway-v1.json.sig").write_text("garbage", encoding="utf-8")
    assert_one_line_error(run("--trust", trust, "deploy", str(bundle)), "malformed signature file")
    nothing_staged(run)


# --- trust: a store that requires signatures (D25) -------------------------------------------------------


def test_trust_require_end_to_end(run: Any, tmp_path: Path, bundle: Path, store_url: str) -> None:
    """keygen, sign, deploy, `trust require`: then an unsigned deploy is refused even without --trust, a
    signed one deploys with its signer in the audit, a follower holding only the public key serves it,
    and turning the requirement off needs its own command and --yes."""
    from rule_engine import DeploymentManager
    from rule_engine.bundle.signing import TrustPolicy

    key = keygen(run, tmp_path, "ed25519", "release")
    trust = trust_file(tmp_path, key)
    assert run("sign", str(bundle), "--key", key["private_key_file"]).exit_code == 0
    first = ok_json(run("--trust", trust, "deploy", str(bundle), "--json"))["version_id"]
    required = ok_json(run("trust", "require", "--trust", trust, "--by", "alice", "--json"))
    assert required == {
        "require_signatures": True,
        "changed": True,
        "verified": 1,
        "evicted": [],
        "trusted": ["ed25519:release"],
    }
    v2 = tmp_path / "gateway-v2.json"
    shutil.copy(BUNDLES / "gateway-v2.json", v2)
    assert_one_line_error(run("deploy", str(v2)), "requires signed bundles", "no trust policy")
    assert_one_line_error(run("--trust", trust, "deploy", str(v2)), "unsigned bundle")
    assert run("sign", str(v2), "--key", key["private_key_file"]).exit_code == 0
    second = ok_json(run("--trust", trust, "deploy", str(v2), "--json"))["version_id"]
    status = ok_json(run("trust", "status", "--json"))
    assert status["require_signatures"] is True
    assert {v["version_id"]: v["signer"] for v in status["versions"]} == {
        first: "ed25519:release",
        second: "ed25519:release",
    }
    history = ok_json(run("--trust", trust, "history", "--json"))  # a manager on this store needs a trust policy
    prepared = [e for e in history["audit"] if e["action"] == "prepare" and e["version_id"] == second]
    assert prepared[0]["reason"].endswith("signed by ed25519:release")
    assert [e["actor"] for e in history["audit"] if e["action"] == "trust"] == ["alice"]
    public_only = tmp_path / "public.json"  # what followers get: the public key, readable by all
    public_only.write_text(json.dumps(key["trust"]), encoding="utf-8")
    follower = DeploymentManager.open(store_url, follow=False, trust=TrustPolicy.from_file(public_only))
    try:
        assert follower.get_active_version_id() == second
        assert follower.stale is None
    finally:
        follower.close()
    assert run("--trust", trust, "trust", "allow-unsigned").exit_code == 2  # --yes is required
    off = ok_json(run("--trust", trust, "trust", "allow-unsigned", "--yes", "--reason", "rotation", "--json"))
    assert off == {"require_signatures": False, "changed": True}
    assert ok_json(run("trust", "status", "--json"))["require_signatures"] is False


def test_trust_require_refuses_an_unsigned_active_version(run: Any, tmp_path: Path, bundle: Path) -> None:
    """What serves was deployed unsigned: one error line naming it, and the store does not require signatures."""
    trust = trust_file(tmp_path, keygen(run, tmp_path, "ed25519", "release"))
    version = ok_json(run("deploy", str(bundle), "--json"))["version_id"]
    assert_one_line_error(run("trust", "require", "--trust", trust), "what serves is not signed", version)
    assert ok_json(run("trust", "status", "--json"))["require_signatures"] is False
