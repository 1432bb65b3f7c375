#!/usr/bin/env bash
# A model of the queue's hot path without the worker: pgbench calls damascus_end_group
# over and over from one connection, each call ending a group of G jobs and claiming
# the next G, so the server's cost of a group is measured alone, and a schema change
# can be tried by applying SQL to the model's database before the run.
#
#   scripts/group-end-model.sh SERVER_URL [GROUP] [ITEMS] [PATCH.sql]
#
# SERVER_URL: a PostgreSQL server (the model creates and drops a database
# `damascus_model` on it). GROUP: jobs per group (default 8). ITEMS: backlog
# (default 20000). PATCH.sql: applied after the migrations (e.g. a trigger dropped,
# to see what it costs). Prints the latency of one cycle (ms) for six runs of 300
# cycles each, sorted. Needs a release build (cargo build --release) and pgbench.
set -euo pipefail
cd "$(dirname "$0")/.."
export PGOPTIONS="-c client_min_messages=warning"
server=${1:?usage: scripts/group-end-model.sh SERVER_URL [GROUP] [ITEMS] [PATCH.sql]}
group=${2:-8}
items=${3:-20000}
patch=${4:-}
case "$server" in
    *\?*) db_url="${server%%\?*}"; query="?${server#*\?}" ;;
    *) db_url="$server"; query="" ;;
esac
model_url="${db_url%/*}/damascus_model${query}"
psql "$server" -qAt -c "drop database if exists damascus_model" -c "create database damascus_model"
trap 'psql "$server" -qAt -c "drop database if exists damascus_model"' EXIT
DATABASE_URL="$model_url" ./target/release/damascus init >/dev/null
psql "$model_url" -qAt -v ON_ERROR_STOP=1 >/dev/null <<SQL
select damascus_set_concurrency($group);
insert into damascus_worker_processes (id, host, pid, concurrency, lease_ms)
    overriding system value values (1, 'model', 0, $group, 30000);
-- Each item in a repository of its own: the items of one repository run one at a
-- time, in their merge queue's order.
with p as (
    insert into projects (name, repository)
    select 'model-' || g, '/model-' || g || '.git' from generate_series(1, $items) g
    returning id, name)
insert into work_items (project_id, title, body, phase, max_attempts_per_phase, max_attempts_total)
select p.id, p.name, repeat('x', 256), 'review', 3, 10 from p;
vacuum analyze;
checkpoint;
SQL
psql "$model_url" -qAt -v ON_ERROR_STOP=1 -f scripts/group-end-model.sql
if [ -n "$patch" ]; then
    psql "$model_url" -qAt -v ON_ERROR_STOP=1 -f "$patch"
fi
script=$(mktemp)
echo "select model_cycle($group);" >"$script"
for _ in 1 2 3 4 5 6; do
    pgbench "$model_url" -n -M prepared -c 1 -t 300 -f "$script" 2>&1 |
        awk '/latency average/ {print $4}'
done | sort -n | paste -sd' ' | sed "s/^/ms per cycle of $group jobs: /"
rm -f "$script"
