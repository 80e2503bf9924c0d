"""The node protocol moved to core/ops.py (typed ops); the old names stay importable from here."""
from core.ops import STALE, WIRE_VERSION, Op, Own, pack, unpack  # noqa: F401
