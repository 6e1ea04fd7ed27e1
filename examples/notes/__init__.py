"""A downstream service that trusts authsvc tokens through authsvc-kit only."""
