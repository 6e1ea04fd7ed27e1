"""The benchmark's checks that are not a single wrk run: write coalescing and table growth."""

from __future__ import annotations

import asyncpg

# Counts every row UPDATE of `sessions`, whichever statement or process makes it: exact, unlike
# pg_stat_user_tables, whose counters are flushed by backends only every so often.
_COUNT_UPDATES = """
CREATE TABLE IF NOT EXISTS bench_session_updates (n bigint NOT NULL);
INSERT INTO bench_session_updates SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM bench_session_updates);
CREATE OR REPLACE FUNCTION bench_count_session_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE bench_session_updates SET n = n + 1;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER bench_count_session_updates AFTER UPDATE ON sessions
    FOR EACH ROW EXECUTE FUNCTION bench_count_session_update();
"""


async def install_update_counter(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(_COUNT_UPDATES)
    finally:
        await conn.close()


async def session_updates(dsn: str, *, drop: bool = False) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        count = int(await conn.fetchval("SELECT n FROM bench_session_updates"))
        if drop:
            await conn.execute("DROP TRIGGER bench_count_session_updates ON sessions")
        return count
    finally:
        await conn.close()


async def fill_token_table(dsn: str, rows: int, per_session: int = 100) -> int:
    """Grow refresh_tokens to about `rows` rows of a filler user's live sessions (used tokens,
    as rotation leaves them). Returns the table's row count."""
    conn = await asyncpg.connect(dsn)
    try:
        user_id = await conn.fetchval(
            "INSERT INTO users (id, email, password_hash, role, is_active, created_at,"
            " password_changed_at) VALUES (gen_random_uuid(), 'filler@example.com', 'x',"
            " 'user', true, now(), now()) RETURNING id"
        )
        await conn.execute(
            "INSERT INTO sessions (id, user_id, created_at, last_seen_at, idle_expires_at,"
            " absolute_expires_at) SELECT gen_random_uuid(), $1, now(), now(),"
            " now() + interval '1 day', now() + interval '1 day'"
            " FROM generate_series(1, $2::int)",
            user_id,
            max(1, rows // per_session),
        )
        await conn.execute(
            "INSERT INTO refresh_tokens (id, session_id, parent_id, generation, token_hash,"
            " created_at, used_at) SELECT gen_random_uuid(), s.id, NULL, g,"
            " sha256(gen_random_uuid()::text::bytea), now(), now()"
            " FROM sessions s CROSS JOIN generate_series(1, $2::int) g WHERE s.user_id = $1",
            user_id,
            per_session,
        )
        await conn.execute("VACUUM ANALYZE refresh_tokens")
        await conn.execute("VACUUM ANALYZE sessions")
        return int(await conn.fetchval("SELECT count(*) FROM refresh_tokens"))
    finally:
        await conn.close()


async def count_token_rows(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM refresh_tokens"))
    finally:
        await conn.close()
