"""Who may do what: organizations and keys, the platform secret, rate limits, audit log,
idempotency."""
