"""OpenID Connect Back-Channel Logout 1.0: every end of a session is told to the downstream
services configured in BACKCHANNEL_LOGOUT_CLIENTS, through the outbox (docs/downstream.md)."""
