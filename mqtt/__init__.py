"""The MQTT codec and topic matching: a leaf package with no I/O (docs/codec-api.md)."""
from . import codec as _codec, constants as _constants, errors as _errors, packets as _packets
from .codec import *  # noqa: F403
from .constants import *  # noqa: F403
from .errors import *  # noqa: F403
from .packets import *  # noqa: F403

__all__ = [*_constants.__all__, *_errors.__all__, *_packets.__all__, *_codec.__all__]

try:
    from . import topics as _topics
except ModuleNotFoundError as e:  # mqtt/topics.py is written separately; absent until it lands
    if e.name != f"{__name__}.topics":
        raise
else:
    from .topics import *  # noqa: F403

    __all__ += getattr(_topics, "__all__", [n for n in vars(_topics) if not n.startswith("_")])
