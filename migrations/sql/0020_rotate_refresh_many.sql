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
    revoked_at timestamptz,
    amr text,
    auth_time timestamptz,
    factor_at timestamptz
)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    i integer;
    v_owned uuid[];
    v_locked uuid[];
BEGIN
    -- The sessions the presented tokens belong to (a token of another session is refused by
    -- the rotation itself, before it locks anything: a forged session id holds up no one).
    -- One index lookup per element: a join of the unnested arrays was planned as a scan of
    -- the whole token table, whose cost grew with it.
    v_owned := '{}';
    FOR i IN SELECT generate_subscripts(p_session_ids, 1) LOOP
        PERFORM 1 FROM refresh_tokens t
         WHERE t.token_hash = p_token_hashes[i] AND t.session_id = p_session_ids[i];
        IF FOUND THEN
            v_owned := v_owned || p_session_ids[i];
        END IF;
    END LOOP;
    -- Their row locks, all taken first and none waited for: a session another transaction
    -- holds (a logout, a password change, a batch of another worker) is answered 'busy' and
    -- its rotation goes alone, where it waits as it always did. So a batch never waits for a
    -- lock while holding others (no deadlock), and one busy session holds up no one else.
    SELECT COALESCE(array_agg(s.id), '{}') INTO v_locked
      FROM (SELECT s.id FROM sessions s WHERE s.id = ANY(v_owned)
             ORDER BY s.id FOR UPDATE SKIP LOCKED) AS s;
    -- In arrival order: two rotations of one session keep it, and the second sees the first,
    -- as it would have in its own transaction after the first committed.
    FOR i IN SELECT generate_subscripts(p_session_ids, 1) LOOP
        IF p_session_ids[i] = ANY(v_owned) AND NOT p_session_ids[i] = ANY(v_locked) THEN
            ord := i;
            outcome := 'busy';
            RETURN NEXT;
            CONTINUE;
        END IF;
        RETURN QUERY SELECT i, r.* FROM authsvc_rotate_refresh(
            p_session_ids[i], p_token_hashes[i], p_successor_ids[i], p_successor_hashes[i],
            p_nows[i], p_idle_seconds, p_touch_seconds, p_reuse_seconds, p_ips[i],
            p_user_agents[i], p_arrived_ats[i], p_may_rotate[i], p_logout_clients,
            p_dpop_jkts[i]) AS r;
    END LOOP;
END;
$$;
