"""Errors a user can act on: stages print their message, not a traceback."""


class CatsDogsError(Exception):
    """Base class of every error whose message tells the user what to fix."""
