"""The logout-free hour's short variant (issue 20): `bench.soak` for 5 minutes with 100 users,
through nginx to three replicas, PostgreSQL behind PgBouncer, Redis; a replica killed and
restarted twice, PostgreSQL down for 10 s, Redis restarted empty. The hour itself is
`python -m bench.soak` (docs/scaling.md has its figures). SOAK_USERS and SOAK_MINUTES change
the size of this one."""

from __future__ import annotations

import os

import pytest

from bench.gateway import nginx_binary
from bench.soak import INVARIANTS, soak
from tests.support.pgbouncer import require_pgbouncer

USERS = int(os.environ.get("SOAK_USERS", "100"))
MINUTES = float(os.environ.get("SOAK_MINUTES", "5"))


@pytest.mark.parametrize("database", ["postgres"])  # a private cluster: a PostgreSQL test
async def test_users_through_replica_kills_and_outages_are_never_logged_out(database: str) -> None:
    require_pgbouncer()
    if nginx_binary() is None:
        pytest.fail("nginx is not installed (apt-get install -y nginx)")

    results = await soak(MINUTES * 60, USERS)

    broken = {name: results[name] for name in INVARIANTS if results[name]}
    assert not broken, (broken, results["first_false_logouts"], results["faults"])
    assert results["alive_at_end"] == results["live_sessions_at_end"] > 0
    # Every fault happened and every restarted replica came back at its first start.
    assert len(results["faults"]) == 4, results["faults"]
    assert not [fault for fault in results["faults"] if "failed" in fault], results["faults"]
    # The run exercised what it claims: outages answered "try again" (and were retried),
    # users refreshed many times, logged out and back in, and lost answers were resent.
    statuses = results["statuses"]
    assert sum(n for status, n in statuses.items() if status.endswith(" 503")) > 0, statuses
    assert results["rotations"] > 2 * USERS, results["rotations"]
    assert results["logouts"] > 0
    assert results["lost_responses_retried"] > 0
