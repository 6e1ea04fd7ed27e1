-- authsvc_start_session: start a session after a password check in one round trip
-- (PostgreSQL only).
-- Canonical source: app/sessions/sql/start_session.sql. Migrations never read this file; each
-- installs its own pinned copy (migrations/sql/NNNN_start_session.sql). Changing the function
-- means a new migration with a new pinned copy; tests/core/test_migrations.py checks both.
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
    p_token_hash bytea,
    -- The RFC 7638 thumbprint of the DPoP key the session is bound to (RFC 9449), or NULL.
    -- NULL is also what a caller of the version before migration 0013 gets.
    p_dpop_jkt text DEFAULT NULL
) RETURNS TABLE (started boolean, email text, role text)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_variable
DECLARE
    v_password_hash text;
    v_active boolean;
    v_failed_logins integer;
    v_locked_until timestamptz;
    v_mfa_enabled boolean;
BEGIN
    -- The lock orders this login against a concurrent password change or deactivation:
    -- either it happened before (and is seen here) or it waits and revokes this session.
    SELECT u.email, u.role, u.password_hash, u.is_active, u.failed_logins, u.locked_until,
           u.mfa_enabled
      INTO email, role, v_password_hash, v_active, v_failed_logins, v_locked_until,
           v_mfa_enabled
      FROM users u WHERE u.id = p_user_id FOR UPDATE;
    -- An account with a second factor (migration 0020) never gets a session from a password
    -- alone: the caller takes the two-step path (docs/mfa.md).
    IF NOT FOUND OR v_password_hash IS DISTINCT FROM p_password_hash OR NOT v_active
       OR (v_locked_until IS NOT NULL AND v_locked_until > p_now) OR v_mfa_enabled THEN
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
                          idle_expires_at, absolute_expires_at, dpop_jkt)
    VALUES (p_session_id, p_user_id, p_device_name, p_user_agent, p_ip, p_now, p_now,
            p_idle_expires_at, p_absolute_expires_at, p_dpop_jkt);
    INSERT INTO refresh_tokens (id, session_id, parent_id, generation, token_hash, created_at)
    VALUES (p_token_id, p_session_id, NULL, 1, p_token_hash, p_now);
    INSERT INTO audit_events (event, user_id, session_id, ip, user_agent, details, created_at)
    VALUES ('login.succeeded', p_user_id, p_session_id, p_ip, p_user_agent, '{}'::json, p_now);
    started := true;
    RETURN NEXT;
END;
$$;
