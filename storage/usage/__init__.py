"""The usage journal and writer: every usage event from the request path to Postgres, once."""
