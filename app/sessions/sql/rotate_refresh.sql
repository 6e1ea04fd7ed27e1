-- authsvc_rotate_refresh: refresh-token rotation in one round trip (PostgreSQL only).
-- The rules are documented in docs/refresh-rotation.md.
-- Canonical source: app/sessions/sql/rotate_refresh.sql. Migrations never read this file; each
-- installs its own pinned copy (migrations/sql/NNNN_rotate_refresh.sql). Changing the function
-- means a new migration with a new pinned copy; tests/core/test_migrations.py checks both.
CREATE OR REPLACE FUNCTION authsvc_rotate_refresh(
    p_session_id uuid,
    p_token_hash bytea,
    p_successor_id uuid,
    p_successor_hash bytea,
    p_now timestamptz,
    p_idle_seconds double precision,
    p_touch_seconds double precision,
    p_reuse_seconds double precision,
    p_ip text,
    p_user_agent text,
    -- What the reuse interval is measured from: when the request arrived (see
    -- docs/refresh-rotation.md). NULL is a caller of the previous version (migration 0004),
    -- during a rolling upgrade: it gets the previous rules, measured from p_now.
    p_arrived_at timestamptz DEFAULT NULL,
    -- Whether the session's refresh limit has room for a rotation.
    p_may_rotate boolean DEFAULT true,
    -- The back-channel logout clients told of a theft revocation (outbox rows written in this
    -- transaction, as app/backchannel/repository.py writes them). NULL: a caller of a version
    -- before migration 0010, which tells no one.
    p_logout_clients text[] DEFAULT NULL,
    -- The thumbprint of the DPoP key whose proof came with this refresh, or NULL. A session
    -- bound to a key (sessions.dpop_jkt) rotates only with a proof by that key; anything else
    -- is 'dpop_mismatch' and changes nothing (no theft check: without the key a stolen token
    -- is worth nothing, and its owner must not be logged out by the attempt).
    p_dpop_jkt text DEFAULT NULL
) RETURNS TABLE (
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
    -- How and when the session's user proved who they are (migration 0020; docs/mfa.md).
    amr text,
    auth_time timestamptz,
    factor_at timestamptz
)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_variable
DECLARE
    v_token_id uuid;
    v_token_session uuid;
    v_used_at timestamptz;
    v_successor_id uuid;
    v_successor_used_at timestamptz;
    v_target timestamptz;
    v_event text;
    v_details json;
    -- Exact seconds: an interval of days would follow the session time zone across DST.
    v_idle_timeout interval := make_interval(secs => p_idle_seconds);
    v_touch_interval interval := make_interval(secs => p_touch_seconds);
    v_reuse_interval interval := make_interval(secs => p_reuse_seconds);
    v_arrived_at timestamptz := COALESCE(p_arrived_at, p_now);
    v_session_jkt text;
BEGIN
    -- A token of another session is refused before anything is locked: a forged session id
    -- must not hold up (or time) someone else's session.
    PERFORM 1 FROM refresh_tokens t
     WHERE t.token_hash = p_token_hash AND t.session_id = p_session_id;
    IF NOT FOUND THEN
        outcome := 'invalid';
        RETURN NEXT;
        RETURN;
    END IF;

    -- The session row first, as every writer of a session and its tokens does (one lock order:
    -- no deadlock with logout). Racing refreshes of one session queue here; each statement
    -- below then reads what the one before it committed.
    SELECT s.dpop_jkt INTO v_session_jkt FROM sessions s WHERE s.id = p_session_id FOR UPDATE;
    IF NOT FOUND THEN
        outcome := 'invalid';
        RETURN NEXT;
        RETURN;
    END IF;
    IF v_session_jkt IS NOT NULL AND v_session_jkt IS DISTINCT FROM p_dpop_jkt THEN
        outcome := 'dpop_mismatch';
        INSERT INTO audit_events (event, user_id, session_id, ip, user_agent, details, created_at)
        SELECT 'refresh.dpop_refused', s.user_id, p_session_id, p_ip, p_user_agent,
               json_build_object('proof', p_dpop_jkt IS NOT NULL), p_now
          FROM sessions s WHERE s.id = p_session_id;
        RETURN NEXT;
        RETURN;
    END IF;

    SELECT t.id, t.session_id, t.generation, t.used_at, n.id, n.used_at
      INTO v_token_id, v_token_session, generation, v_used_at, v_successor_id, v_successor_used_at
      FROM refresh_tokens t
      LEFT JOIN refresh_tokens n ON n.parent_id = t.id
     WHERE t.token_hash = p_token_hash;
    IF NOT FOUND OR v_token_session <> p_session_id THEN
        outcome := 'invalid';
        generation := NULL;
        RETURN NEXT;
        RETURN;
    END IF;

    SELECT s.user_id, u.email, u.role, u.is_active, s.created_at, s.idle_expires_at,
           s.absolute_expires_at, s.revoked_at, s.amr, s.auth_time, s.factor_at
      INTO user_id, email, role, user_active, created_at, idle_expires_at,
           absolute_expires_at, revoked_at, amr, auth_time, factor_at
      FROM sessions s JOIN users u ON u.id = s.user_id
     WHERE s.id = p_session_id;
    IF revoked_at IS NOT NULL OR NOT user_active
       OR p_now >= idle_expires_at OR p_now >= absolute_expires_at THEN
        outcome := 'unusable';  -- the caller says which (revoked or expired); nothing changes
        RETURN NEXT;
        RETURN;
    END IF;

    IF v_used_at IS NULL AND NOT p_may_rotate THEN
        outcome := 'limited';  -- the session's refresh limit is used up: nothing changes
        RETURN NEXT;
        RETURN;
    ELSIF v_used_at IS NULL THEN
        UPDATE refresh_tokens t SET used_at = p_now WHERE t.id = v_token_id AND t.used_at IS NULL;
        IF NOT FOUND THEN  -- cannot happen under the session lock; never branch if it did
            outcome := 'invalid';
            generation := NULL;
            RETURN NEXT;
            RETURN;
        END IF;
        INSERT INTO refresh_tokens (id, session_id, parent_id, generation, token_hash, created_at)
        VALUES (p_successor_id, p_session_id, v_token_id, generation + 1, p_successor_hash, p_now);
        generation := generation + 1;
        outcome := 'rotated';
        v_event := 'refresh.rotated';
        v_details := json_build_object('generation', generation);
        IF v_session_jkt IS NULL AND p_dpop_jkt IS NOT NULL THEN
            -- RFC 9449 §5: a refresh with a proof binds the session from now on (its refresh
            -- tokens, not only the access token it gets), as a login with a proof would have.
            UPDATE sessions s SET dpop_jkt = p_dpop_jkt WHERE s.id = p_session_id;
            v_details := json_build_object('generation', generation, 'dpop_bound', true);
        END IF;
    ELSIF v_successor_id IS NOT NULL AND v_successor_used_at IS NULL
          AND v_arrived_at - v_used_at <= v_reuse_interval THEN
        outcome := 'retried';
        reuse_class := 'retry_inside_interval';
        v_event := 'refresh.retried';
        v_details := json_build_object('reuse_class', reuse_class);
    ELSIF p_arrived_at IS NOT NULL AND v_arrived_at - v_used_at <= v_reuse_interval THEN
        -- An older token (its successor was used too) arriving within the reuse interval of
        -- its first use: a delayed duplicate the client has moved on from. Refused without
        -- revoking anything; only the audit row is written.
        outcome := 'superseded';
        reuse_class := 'ancestor_inside_interval';
        INSERT INTO audit_events (event, user_id, session_id, ip, user_agent, details, created_at)
        VALUES ('refresh.superseded', user_id, p_session_id, p_ip, p_user_agent,
                json_build_object('reuse_class', reuse_class, 'generation', generation), p_now);
        RETURN NEXT;
        RETURN;
    ELSE
        reuse_class := CASE WHEN v_successor_id IS NOT NULL AND v_successor_used_at IS NULL
                            THEN 'stale_replay' ELSE 'ancestor_replay' END;
        UPDATE sessions s SET revoked_at = p_now, revoke_reason = 'refresh_token_reused'
         WHERE s.id = p_session_id AND s.revoked_at IS NULL;
        UPDATE refresh_tokens t SET revoked_at = p_now
         WHERE t.session_id = p_session_id AND t.revoked_at IS NULL;
        revoked_at := p_now;
        outcome := 'reused';
        -- Every replica drops the session from its cache (app/sessions/push.py); PostgreSQL
        -- delivers this at commit, so never before the revocation is visible.
        PERFORM pg_notify('authsvc_sessions_revoked', p_session_id::text);
        -- One back-channel logout per client, delivered by the outbox worker once this commits.
        INSERT INTO outbox_messages (kind, idempotency_key, payload, created_at, next_attempt_at,
                                     attempts)
        SELECT 'backchannel_logout', 'backchannel_logout:' || p_session_id::text || ':' || c,
               json_build_object('sid', p_session_id::text, 'sub', user_id::text,
                                 'client_id', c),
               p_now, p_now, 0
          FROM unnest(COALESCE(p_logout_clients, '{}'::text[])) AS c
        ON CONFLICT (idempotency_key) DO NOTHING;
        INSERT INTO audit_events (event, user_id, session_id, ip, user_agent, details, created_at)
        VALUES ('refresh.reuse_detected', user_id, p_session_id, p_ip, p_user_agent,
                json_build_object('reuse_class', reuse_class, 'generation', generation), p_now);
        RETURN NEXT;
        RETURN;
    END IF;

    -- Slide the idle deadline; written only when the stored one lags by a touch interval.
    v_target := LEAST(p_now + v_idle_timeout, absolute_expires_at);
    IF v_target > idle_expires_at THEN
        UPDATE sessions s SET last_seen_at = p_now, idle_expires_at = v_target
         WHERE s.id = p_session_id AND s.revoked_at IS NULL
           AND s.idle_expires_at < v_target - v_touch_interval;
        idle_expires_at := v_target;
    END IF;
    INSERT INTO audit_events (event, user_id, session_id, ip, user_agent, details, created_at)
    VALUES (v_event, user_id, p_session_id, p_ip, p_user_agent, v_details, p_now);
    RETURN NEXT;
END;
$$;
