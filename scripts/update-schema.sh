#!/usr/bin/env bash
# Regenerates schema.sql from migrations/: migrates a fresh test database and dumps it.
# Run it after adding or changing a migration, and commit both together.
set -euo pipefail
cd "$(dirname "$0")/.."
DAMASCUS_UPDATE_SCHEMA=1 cargo test -p damascus-db --test db -- schema::schema_sql_matches_the_migrations --exact
echo "schema.sql regenerated; review it with: git diff schema.sql"
