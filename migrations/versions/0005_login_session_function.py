"""start a session after a password check in one round trip (PostgreSQL function)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 23:00:00

After the password hash matched, a login locks the user row, checks that nothing changed
while the hash ran, clears old failures, inserts the session, its first refresh token and the
audit row: five statements, or seven round trips with BEGIN and COMMIT from Python, and most
of the service's own CPU time per login. As one function call it is one round trip and one
implicit transaction. The function only starts sessions: when the user changed, was
deactivated or locked meanwhile it changes nothing and says so, and the service takes its
general path (app/auth/service.py), which records why the login failed.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FUNCTION = r"""
CREATE OR REPLACE FUNCTION authsvc_start_session(
    p_user_id uuid,
    p_password_hash text,
    p_now timestamptz,
    p_session_id uuid,
    p_idle_expires_at timestamptz,
    p_absolute_expires_at timestamptz,
    p_device_name text,
    p_user_agent text,
    p_ip text,
    p_token_id uuid,
    p_token_hash bytea
) RETURNS TABLE (started boolean, email text, role text)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_variable
DECLARE
    v_password_hash text;
    v_active boolean;
    v_failed_logins integer;
    v_locked_until timestamptz;
BEGIN
    -- The lock orders this login against a concurrent password change or deactivation:
    -- either it happened before (and is seen here) or it waits and revokes this session.
    SELECT u.email, u.role, u.password_hash, u.is_active, u.failed_logins, u.locked_until
      INTO email, role, v_password_hash, v_active, v_failed_logins, v_locked_until
      FROM users u WHERE u.id = p_user_id FOR UPDATE;
    IF NOT FOUND OR v_password_hash IS DISTINCT FROM p_password_hash OR NOT v_active
       OR (v_locked_until IS NOT NULL AND v_locked_until > p_now) THEN
        started := false;
        email := NULL;
        role := NULL;
        RETURN NEXT;
        RETURN;
    END IF;
    IF v_failed_logins <> 0 OR v_locked_until IS NOT NULL THEN
        UPDATE users u SET failed_logins = 0, locked_until = NULL WHERE u.id = p_user_id;
    END IF;
    INSERT INTO sessions (id, user_id, device_name, user_agent, ip, created_at, last_seen_at,
                          idle_expires_at, absolute_expires_at)
    VALUES (p_session_id, p_user_id, p_device_name, p_user_agent, p_ip, p_now, p_now,
            p_idle_expires_at, p_absolute_expires_at);
    INSERT INTO refresh_tokens (id, session_id, parent_id, generation, token_hash, created_at)
    VALUES (p_token_id, p_session_id, NULL, 1, p_token_hash, p_now);
    INSERT INTO audit_events (event, user_id, session_id, ip, user_agent, details, created_at)
    VALUES ('login.succeeded', p_user_id, p_session_id, p_ip, p_user_agent, '{}'::json, p_now);
    started := true;
    RETURN NEXT;
END;
$$;
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION IF EXISTS authsvc_start_session("
            "uuid, text, timestamptz, uuid, timestamptz, timestamptz, text, text, text, uuid,"
            " bytea)"
        )
