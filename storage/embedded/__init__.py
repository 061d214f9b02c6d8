"""The embedded default: private PostgreSQL and Valkey servers for zero setup and tests."""
