-- The bench's own tables, created in each scratch database after the migrations and
-- dropped with it. They are not part of the product's schema.

-- Single-row inserts in autocommit: the commit-rate baseline (this crate's client and
-- pgbench both insert here).
create table if not exists bench_commits (
    id bigint generated always as identity primary key,
    payload text not null
);

-- A bare SKIP LOCKED queue, for scale beside a Damascus job.
create table if not exists bench_bare_queue (
    id bigint generated always as identity primary key,
    payload text not null
);
