"""The outbox: messages to other systems, written in the transaction that makes them true and
delivered afterwards by a worker in every replica (retries, backoff, give-up, audit)."""
