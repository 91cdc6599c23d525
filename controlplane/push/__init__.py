"""Pushing assignments to worker agents: the hub of targets, stream sessions, change feeds."""
