"""Email: templates, the transports (SMTP, or files in development) and the outbox sender that
delivers what the request that created it wrote in its own transaction."""
