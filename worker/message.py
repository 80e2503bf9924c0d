"""The message model lives in core/message.py (shared by every process of a node)."""
from core.message import FORWARDED, Message  # noqa: F401
