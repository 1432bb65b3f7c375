#!/usr/bin/env bash
# A 30-second smoke check of a running Damascus: healthz, items, group_by, stats, the
# 401 path and an ingest with a token. Exits non-zero on the first failure.
#
#   DAMASCUS_URL=http://127.0.0.1:8080 DAMASCUS_TOKEN=dmsc_... DAMASCUS_PROJECT=web scripts/verify.sh
set -euo pipefail
url=${DAMASCUS_URL:-http://127.0.0.1:8080}
token=${DAMASCUS_TOKEN:?set DAMASCUS_TOKEN (create one with: damascus token create verify)}
project=${DAMASCUS_PROJECT:?set DAMASCUS_PROJECT to a project that exists (damascus project list)}
fail() { echo "verify: FAILED: $*" >&2; exit 1; }
check() { # name, expected status, curl args...
    local name=$1 want=$2; shift 2
    local got
    got=$(curl -sS -o /tmp/damascus-verify.json -w '%{http_code}' --max-time 10 "$@") || fail "$name: no answer from $url"
    [ "$got" = "$want" ] || fail "$name: HTTP $got, expected $want: $(head -c 300 /tmp/damascus-verify.json)"
    echo "verify: ok   $name ($got)"
}
auth=(-H "Authorization: Bearer $token")
check "healthz" 200 "$url/healthz"
check "401 without a token" 401 "$url/v1/items"
check "401 with a wrong token" 401 -H "Authorization: Bearer dmsc_0_wrong" "$url/v1/items"
check "items" 200 "${auth[@]}" "$url/v1/items"
check "items grouped by project" 200 "${auth[@]}" "$url/v1/items?group_by=project"
grep -q '"groups"' /tmp/damascus-verify.json || fail "group_by=project answered without groups"
check "stats" 200 "${auth[@]}" "$url/v1/stats"
check "ingest" 201 "${auth[@]}" -H 'Content-Type: application/json' \
    -d "{\"project\": \"$project\", \"title\": \"verify.sh smoke test $(date +%s)\", \"body\": \"Created by scripts/verify.sh.\"}" \
    "$url/v1/items"
id=$(sed -n 's/^{"id":\([0-9]*\).*/\1/p' /tmp/damascus-verify.json)
[ -n "$id" ] || fail "ingest answered without an id"
check "the new item" 200 "${auth[@]}" "$url/v1/items/$id"
check "a bad body is refused" 422 "${auth[@]}" -H 'Content-Type: application/json' -d '{"title": 5}' "$url/v1/items"
echo "verify: all checks passed against $url (item $id created)"
