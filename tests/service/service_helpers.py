"""Shared by the service tests: the base URL a test client uses (the service answers loopback Host names only,
against DNS rebinding)."""

LOCAL = "http://localhost"
