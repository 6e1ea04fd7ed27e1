"""`python -m bench.rotation_batches`: what coalescing concurrent rotations would save.

A refresh costs one call of `authsvc_rotate_refresh`, its own transaction and round trip. Could
the rotations of concurrent refreshes share one call and one commit (as DPoP's replay cache
shares one Redis round trip, app.core.coalesce)? This measures the most that could save, with
no HTTP at all: 8 rotation chains on a fresh database, driven straight on asyncpg either one
rotation per call (8 clients) or in batches of 2, 4 or 8 chains per call, through a throwaway
wrapper function (created in the bench database only) that runs the same function for each
chain in session-id order, in one transaction. Printed per rotation: PostgreSQL's CPU (all its
processes, from /proc) and this process's CPU (asyncpg's encoding, decoding and socket calls).
Linux only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from bench.__main__ import _new_database, drop_database

_TICK = os.sysconf("SC_CLK_TCK")
_ROTATE_EACH = """
CREATE OR REPLACE FUNCTION bench_rotate_batch(
    p_session_ids uuid[], p_token_hashes bytea[], p_successor_ids uuid[],
    p_successor_hashes bytea[], p_now timestamptz, p_idle double precision,
    p_touch double precision, p_reuse double precision
) RETURNS TABLE (ord integer, outcome text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE i integer;
BEGIN
    -- Session-id order: two batches lock the sessions they share in the same order.
    FOR i IN SELECT o FROM generate_subscripts(p_session_ids, 1) AS o
             ORDER BY p_session_ids[o], o LOOP
        RETURN QUERY SELECT i, r.outcome FROM authsvc_rotate_refresh(
            p_session_ids[i], p_token_hashes[i], p_successor_ids[i], p_successor_hashes[i],
            p_now, p_idle, p_touch, p_reuse, '127.0.0.1', 'bench', p_now, true, '{}', NULL) r;
    END LOOP;
END;
$$;
"""
_ONE = "SELECT * FROM authsvc_rotate_refresh($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14)"
_BATCH = "SELECT ord, outcome FROM bench_rotate_batch($1, $2, $3, $4, $5, $6, $7, $8)"
_POLICY = (3600.0, 60.0, 10.0)  # idle, touch and reuse seconds


@dataclass
class Chain:
    session_id: uuid.UUID
    token_hash: bytes


def _postgres_cpu() -> dict[str, float]:
    """CPU seconds of each PostgreSQL process, by pid."""
    seconds: dict[str, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if text[text.index("(") + 1 : text.rindex(")")] == "postgres":
            fields = text.rpartition(")")[2].split()
            seconds[stat.parent.name] = (int(fields[11]) + int(fields[12])) / _TICK
    return seconds


def _postgres_cpu_since(before: dict[str, float]) -> float:
    # By pid: a backend of an earlier round that exits meanwhile takes its time with it.
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in _postgres_cpu().items())


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _chains(conn: Any, count: int) -> list[Chain]:
    user_id = await conn.fetchval("SELECT id FROM users LIMIT 1")
    now = datetime.now(UTC)
    chains = [Chain(uuid.uuid4(), os.urandom(32)) for _ in range(count)]
    for chain in chains:
        await conn.execute(
            "INSERT INTO sessions (id, user_id, created_at, last_seen_at, idle_expires_at,"
            " absolute_expires_at) VALUES ($1, $2, $3, $3, $4, $5)",
            chain.session_id,
            user_id,
            now,
            now + timedelta(hours=1),
            now + timedelta(days=1),
        )
        await conn.execute(
            "INSERT INTO refresh_tokens (id, session_id, generation, token_hash, created_at)"
            " VALUES ($1, $2, 1, $3, $4)",
            uuid.uuid4(),
            chain.session_id,
            chain.token_hash,
            now,
        )
    return chains


async def _rotate(conn: Any, group: list[Chain]) -> int:
    """One call rotating each chain of `group` once; returns the rotations done."""
    now = datetime.now(UTC)
    successors = [os.urandom(32) for _ in group]
    if len(group) == 1:
        outcome = await conn.fetchrow(
            _ONE,
            group[0].session_id,
            group[0].token_hash,
            uuid.uuid4(),
            successors[0],
            now,
            *_POLICY,
            "127.0.0.1",
            "bench",
            now,
            True,
            [],
            None,
        )
        rows = [{"ord": 1, "outcome": outcome["outcome"]}]
    else:
        rows = await conn.fetch(
            _BATCH,
            [chain.session_id for chain in group],
            [chain.token_hash for chain in group],
            [uuid.uuid4() for _ in group],
            successors,
            now,
            *_POLICY,
        )
    for row in rows:
        if row["outcome"] != "rotated":
            raise RuntimeError(f"a rotation answered {row['outcome']}")
        group[row["ord"] - 1].token_hash = successors[row["ord"] - 1]
    return len(rows)


async def _round(dsn: str, chains: int, batch: int, seconds: float) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(_ROTATE_EACH)
        heads = await _chains(conn, chains)
    finally:
        await conn.close()
    groups = [heads[i : i + batch] for i in range(0, chains, batch)]
    pool = await asyncpg.create_pool(dsn, min_size=len(groups), max_size=len(groups))
    done = 0
    deadline = time.monotonic() + seconds

    async def drive(group: list[Chain]) -> None:
        nonlocal done
        async with pool.acquire() as conn:
            while time.monotonic() < deadline:
                rotated = await _rotate(conn, group)
                done += rotated  # after the await: `done += await ...` reads `done` before it

    try:
        postgres, own, started = _postgres_cpu(), _own_cpu(), time.monotonic()
        await asyncio.gather(*(drive(group) for group in groups))
        elapsed = time.monotonic() - started
        postgres_seconds, own = _postgres_cpu_since(postgres), _own_cpu() - own
    finally:
        await pool.close()
    return (
        f"{batch:5d}  {done / elapsed:9.0f}  {1000 * postgres_seconds / done:13.3f}"
        f"  {1000 * own / done:11.3f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rotation_batches", description=__doc__)
    parser.add_argument("--seconds", type=float, default=6.0, help="per batch size")
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument(
        "--admin-dsn",
        default=os.environ.get("BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    args = parser.parse_args()
    print(f"{args.chains} rotation chains, {args.seconds:g} s per batch size; CPU ms per rotation")
    print("batch  rotations/s  postgres CPU  client CPU")
    for batch in (1, 2, 4, 8):
        databases: list[str] = []
        try:
            raw_dsn, _ = _new_database(args, databases)
            print(asyncio.run(_round(raw_dsn, args.chains, batch, args.seconds)), flush=True)
        finally:
            for name in databases:
                asyncio.run(drop_database(args.admin_dsn, name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
