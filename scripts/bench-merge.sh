#!/usr/bin/env bash
# The merge queue measured end to end with the real binary: N stories into one local
# repository, C phases at once, a test command that takes T seconds, for merge batch
# sizes 1 and 4, beside the same stories merged one after another (each story ingested
# once the one before it merged). Each story adds its own file; with --changelog each
# also adds a line to CHANGELOG.md, so every branch conflicts at the head of the queue
# and the scripted agent resolves it (keeping every line).
#
# Prints, per scenario: wall time to merge all N, agent runs per story, test runs per
# merged story, and whether every commit of main's first-parent history passes the test.
#
# Usage: scripts/bench-merge.sh [-n N] [-c C] [-t T] [--changelog] [--bin PATH]
set -euo pipefail
cd "$(dirname "$0")/.."

stories=20
concurrency=4
test_secs=1
changelog=0
bin=target/release/damascus
while [ $# -gt 0 ]; do
    case "$1" in
        -n) stories="$2"; shift 2 ;;
        -c) concurrency="$2"; shift 2 ;;
        -t) test_secs="$2"; shift 2 ;;
        --changelog) changelog=1; shift ;;
        --bin) bin="$2"; shift 2 ;;
        *) echo "unknown argument $1; usage: $0 [-n N] [-c C] [-t T] [--changelog] [--bin PATH]" >&2; exit 2 ;;
    esac
done
[ -x "$bin" ] || { echo "no damascus binary at $bin; build it with: cargo build --release" >&2; exit 2; }
bin=$(realpath "$bin")

work=$(mktemp -d /tmp/damascus-bench-merge.XXXXXX)
export DAMASCUS_DATA_DIR="$work/data"
unset DATABASE_URL
trap '"$bin" db stop >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

counts="$work/counts"
mkdir -p "$counts"
cat > "$work/agent.sh" <<AGENT
#!/bin/sh
cat > /dev/null
echo "\$DAMASCUS_ITEM_ID \$DAMASCUS_TASK" >> "$counts/agent-runs"
if [ "\$DAMASCUS_TASK" = resolve-conflicts ]; then
  grep -v -e '^<<<<<<< ' -e '^=======\$' -e '^>>>>>>> ' CHANGELOG.md > CHANGELOG.tmp
  mv CHANGELOG.tmp CHANGELOG.md
else
  echo "\$DAMASCUS_ITEM_ID" > "change-\$DAMASCUS_ITEM_ID.txt"
  if [ "$changelog" = 1 ]; then echo "- item \$DAMASCUS_ITEM_ID" >> CHANGELOG.md; fi
fi
echo '{"type":"result","subtype":"success","is_error":false,"total_cost_usd":0,"result":"done"}'
AGENT
chmod +x "$work/agent.sh"
# The check: no conflict markers, and one changelog line per change file when the
# changelog is in play.
check="! grep -q '^<<<<<<<' CHANGELOG.md"
if [ "$changelog" = 1 ]; then
    check="$check && [ \"\$(grep -c '^- item' CHANGELOG.md)\" = \"\$(ls | grep -c '^change-')\" ]"
fi
test_command="echo run >> '$counts/test-runs'; sleep $test_secs; $check"

"$bin" init >/dev/null

scenario=0
new_repo() {
    local repo="$work/repo-$scenario.git" seed="$work/seed-$scenario"
    git init --quiet --initial-branch=main "$seed"
    printf '# Changelog\n' > "$seed/CHANGELOG.md"
    git -C "$seed" add -A
    git -C "$seed" -c user.name=bench -c user.email=bench@localhost commit --quiet -m "Initial commit"
    git clone --quiet --bare "$seed" "$repo"
    echo "$repo"
}

story() {
    printf 'Change %s.\n\n## Acceptance criteria\n- the change has its own file\n' "$1"
}

history_passes() {
    local repo="$1" tree
    for commit in $(git -C "$repo" rev-list --first-parent main); do
        tree=$(mktemp -d "$work/tree.XXXXXX")
        git -C "$repo" archive "$commit" | tar -x -C "$tree"
        (cd "$tree" && sh -c "$check") || { echo "no ($commit fails)"; return; }
        rm -rf "$tree"
    done
    echo yes
}

run_scenario() {
    local label="$1" batch="$2" mode="$3"
    scenario=$((scenario + 1))
    local project="bench$scenario" repo
    repo=$(new_repo)
    : > "$counts/agent-runs"; : > "$counts/test-runs"
    "$bin" project add "$project" --repo "$repo" --spec-mode passthrough \
        --agent-command "$work/agent.sh" --test-command "$test_command" \
        --merge-batch-size "$batch" --max-attempts-total 20 >/dev/null
    local start end
    start=$(date +%s.%N)
    if [ "$mode" = together ]; then
        for n in $(seq "$stories"); do story "$n" | "$bin" ingest -p "$project" --title "Change $n" - >/dev/null; done
        "$bin" cycle --concurrency "$concurrency" >/dev/null 2>&1
    else
        for n in $(seq "$stories"); do
            story "$n" | "$bin" ingest -p "$project" --title "Change $n" - >/dev/null
            "$bin" cycle --concurrency "$concurrency" >/dev/null 2>&1
        done
    fi
    end=$(date +%s.%N)
    local merged agent tests
    merged=$(git -C "$repo" rev-list --count --first-parent main)
    merged=$((merged - 1))
    agent=$(wc -l < "$counts/agent-runs")
    tests=$(wc -l < "$counts/test-runs")
    awk -v label="$label" -v batch="$batch" -v merged="$merged" -v n="$stories" \
        -v start="$start" -v end="$end" -v agent="$agent" -v tests="$tests" -v green="$(history_passes "$repo")" \
        'BEGIN { printf "| %s | %d | %d/%d | %.1f s | %.2f | %.2f | %s |\n", label, batch, merged, n, end - start, agent / n, tests / (merged > 0 ? merged : 1), green }'
}

echo "N=$stories stories, concurrency $concurrency, a test of $test_secs s, changelog conflicts: $([ "$changelog" = 1 ] && echo yes || echo no)"
echo
echo "| scenario | batch | merged | time | agent runs / story | test runs / merged | main always green |"
echo "|---|---:|---:|---:|---:|---:|---|"
run_scenario "one after another" 1 sequential
run_scenario "all at once" 1 together
run_scenario "all at once" 4 together
