"""Webhooks: organizations' endpoints, the event outbox written with each job status change,
Standard Webhooks signing (as OpenAI's SDK verifies it), an SSRF-safe URL check and the
delivery loop with retries. Framework-free: no Flask here."""
