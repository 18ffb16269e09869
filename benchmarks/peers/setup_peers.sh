#!/usr/bin/env bash
# Create one isolated venv per peer library under benchmarks/.venvs/<name> and
# install the peer from PyPI by name. Idempotent: an existing venv is reused and
# pip only installs what is missing. Fails soft: a peer that cannot be installed
# is reported as UNAVAILABLE and the script carries on with the others.
#
# Usage:  bash benchmarks/peers/setup_peers.sh            # all peers
#         bash benchmarks/peers/setup_peers.sh unleash    # only the named ones
set -u

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENVS="$(cd "$HERE/.." && pwd)/.venvs"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
mkdir -p "$VENVS"

# name|pip requirements (space separated)|module to import as a smoke test
# mmh3 goes into every venv so each peer process can measure the "H" baseline itself.
PEERS=(
  "pypi_rule_engine|rule-engine mmh3|rule_engine"
  "unleash|UnleashClient mmh3|UnleashClient"
  "launchdarkly|launchdarkly-server-sdk mmh3|ldclient"
  "growthbook|growthbook mmh3|growthbook"
  "zen_engine|zen-engine mmh3|zen"
  "cedarpy|cedarpy mmh3|cedarpy"
  "cel|common-expression-language mmh3|cel"
  "json_logic|json-logic-qubit mmh3|json_logic"
)


selected=("$@")
status=()
for entry in "${PEERS[@]}"; do
  IFS='|' read -r name reqs module <<<"$entry"
  if [ "${#selected[@]}" -gt 0 ]; then
    skip=1
    for s in "${selected[@]}"; do [ "$s" = "$name" ] && skip=0; done
    [ "$skip" -eq 1 ] && continue
  fi
  venv="$VENVS/$name"
  echo "=== $name: $reqs -> $venv"
  if [ ! -x "$venv/bin/python" ]; then
    if ! "$PYTHON" -m venv "$venv"; then
      echo "!!! $name: could not create venv"; status+=("$name UNAVAILABLE (venv)"); continue
    fi
  fi
  # shellcheck disable=SC2086
  # (grep drops pip's "Location ... is ignored" notes about absent local find-links dirs)
  if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $reqs \
      2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); then
    echo "!!! $name: pip install failed"; status+=("$name UNAVAILABLE (pip install $reqs failed)"); continue
  fi
  # (from / so that a peer module named like ours, e.g. rule_engine, is not shadowed by the repo)
  if ! (cd / && "$venv/bin/python" -c "import $module") 2>/dev/null; then
    echo "!!! $name: import $module failed"; status+=("$name UNAVAILABLE (import $module failed)"); continue
  fi
  installed="$("$venv/bin/python" -m pip list --format=freeze --disable-pip-version-check 2>/dev/null \
    | grep -i -E "^($(echo "$reqs" | tr ' ' '|' | sed 's/[-_]/[-_]/g'))==" | tr '\n' ' ')"
  echo "    installed: $installed"
  status+=("$name OK: $installed")
done

echo
echo "=== summary"
for s in "${status[@]}"; do echo "  $s"; done
exit 0
