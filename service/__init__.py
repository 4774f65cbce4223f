"""Concord: coordination for fleets of AI agents sharing one email tenant."""
