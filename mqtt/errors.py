"""The codec's one exception family: an MQTT reason code plus a detail for the log.

`MQTTError(code, detail)` is the base. The subclasses carry a default code and
take the detail first: `MalformedPacket("truncated string")`; a different code
may still be given, `ProtocolError("alias 0", code=ReasonCode.TOPIC_ALIAS_INVALID)`
or `ProtocolError(ReasonCode.TOPIC_ALIAS_INVALID, "alias 0")`.
"""
from __future__ import annotations

from typing import ClassVar

from .constants import ReasonCode

__all__ = ["MQTTError", "MalformedPacket", "ProtocolError", "PacketTooLarge", "UnsupportedProtocolVersion"]


class MQTTError(Exception):
    """An MQTT-level failure; `.code` is the reason code to answer with."""

    def __init__(self, code: int, detail: str = "") -> None:
        super().__init__(code, detail)
        self.code = ReasonCode(code) if code in ReasonCode._value2member_map_ else code
        self.detail = detail

    def __str__(self) -> str:
        name = self.code.name if isinstance(self.code, ReasonCode) else hex(self.code)
        return f"{name}: {self.detail}" if self.detail else name


class _Defaulted(MQTTError):
    DEFAULT_CODE: ClassVar[ReasonCode]

    def __init__(self, detail: str | int = "", *args, code: int | None = None) -> None:
        if isinstance(detail, int):  # called as (code, detail)
            code, detail = detail, (args[0] if args else "")
        super().__init__(self.DEFAULT_CODE if code is None else code, detail)


class MalformedPacket(_Defaulted):
    DEFAULT_CODE = ReasonCode.MALFORMED_PACKET


class ProtocolError(_Defaulted):
    DEFAULT_CODE = ReasonCode.PROTOCOL_ERROR


class PacketTooLarge(_Defaulted):
    DEFAULT_CODE = ReasonCode.PACKET_TOO_LARGE


class UnsupportedProtocolVersion(_Defaulted):
    """`.version` is the protocol level the CONNECT asked for (None if unknown)."""

    DEFAULT_CODE = ReasonCode.UNSUPPORTED_PROTOCOL_VERSION

    def __init__(self, detail: str | int = "", *args, code: int | None = None, version: int | None = None) -> None:
        super().__init__(detail, *args, code=code)
        self.version = version

    def __reduce__(self):
        return (_rebuild_unsupported, (self.code, self.detail, self.version))


def _rebuild_unsupported(code: int, detail: str, version: int | None) -> UnsupportedProtocolVersion:
    return UnsupportedProtocolVersion(detail, code=code, version=version)
