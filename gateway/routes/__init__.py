"""The HTTP routes beside the proxy: admin, billing, operator and usage endpoints."""
