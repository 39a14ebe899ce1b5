"""Hardening tests (issue 14): each item tried as an attacker would, against a real server."""
