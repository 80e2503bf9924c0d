"""The session model lives in core/session.py (its records travel between processes)."""
from core.session import NEVER, Delivery, OutState, Session, SubOptions, Will  # noqa: F401
