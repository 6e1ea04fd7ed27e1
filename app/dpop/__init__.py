"""DPoP, sender-constrained tokens (RFC 9449): proofs, server nonces and the replay cache."""
