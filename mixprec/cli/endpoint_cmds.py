"""Placeholder."""


def register(sub):
    pass
