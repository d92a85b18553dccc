"""Test helpers: real services, real processes, real HTTP servers on loopback."""
