-- authsvc_rotate_refresh_many: the rotations of concurrent refreshes in one call and one
-- transaction (PostgreSQL only). Each element is exactly one authsvc_rotate_refresh call with
-- the same arguments; what this adds is the shared round trip and commit
-- (docs/refresh-rotation.md, "Concurrent refreshes share a commit").
-- Canonical source: app/sessions/sql/rotate_refresh_many.sql. Migrations never read this file;
-- each installs its own pinned copy (migrations/sql/NNNN_rotate_refresh_many.sql).
CREATE OR REPLACE FUNCTION authsvc_rotate_refresh_many(
    p_session_ids uuid[],
    p_token_hashes bytea[],
    p_successor_ids uuid[],
    p_successor_hashes bytea[],
    p_nows timestamptz[],
    p_idle_seconds double precision,
    p_touch_seconds double precision,
    p_reuse_seconds double precision,
    p_ips text[],
    p_user_agents text[],
    p_arrived_ats timestamptz[],
    p_may_rotate boolean[],
    p_logout_clients text[],
    p_dpop_jkts text[]
) RETURNS TABLE (
    ord integer,
    outcome text,
    generation integer,
    reuse_class text,
    user_id uuid,
    email text,
    role text,
    user_active boolean,
    created_at timestamptz,
    idle_expires_at timestamptz,
    absolute_expires_at timestamptz,
    revoked_at timestamptz
)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    i integer;
BEGIN
    -- In session-id order: a session's row lock is taken in the same order by every batch, so
    -- two batches sharing sessions queue rather than deadlock. Two rotations of one session
    -- keep their order of arrival, and the second sees what the first did, as it would have
    -- had it come in its own transaction after the first committed.
    FOR i IN SELECT o FROM generate_subscripts(p_session_ids, 1) AS o
             ORDER BY p_session_ids[o], o LOOP
        RETURN QUERY SELECT i, r.* FROM authsvc_rotate_refresh(
            p_session_ids[i], p_token_hashes[i], p_successor_ids[i], p_successor_hashes[i],
            p_nows[i], p_idle_seconds, p_touch_seconds, p_reuse_seconds, p_ips[i],
            p_user_agents[i], p_arrived_ats[i], p_may_rotate[i], p_logout_clients,
            p_dpop_jkts[i]) AS r;
    END LOOP;
END;
$$;
