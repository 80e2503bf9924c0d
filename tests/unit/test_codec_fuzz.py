"""Fuzzing the Framer and the decoder: random bytes, and valid packets with bit
flips, truncations, insertions and deletions. Only MQTTError may come out, and
whatever does decode must encode and decode back to the same packet.
"""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mqtt import Framer, MQTTError, decode, encode
from tests.unit.test_codec_roundtrip import any_packet

FUZZ = settings(max_examples=400, deadline=None)
versions = st.sampled_from([3, 4, 5])


def check_frame(first: int, body: bytes, version: int) -> None:
    """Decode one frame; if it decodes, it must survive encode -> decode unchanged."""
    try:
        packet = decode(first, body, version)
    except MQTTError:
        return
    wire = encode(packet, version)
    [(first2, body2)] = list(Framer().feed(wire))
    assert decode(first2, body2, version) == packet


def feed_all(data: bytes, version: int, chunk: int, max_packet_size: int = 268_435_460) -> None:
    """Feed `data` in chunks and decode every frame; stop at the first MQTTError, as a connection would."""
    framer = Framer(max_packet_size)
    try:
        for start in range(0, len(data), chunk):
            for first, body in framer.feed(data[start:start + chunk]):
                check_frame(first, body, version)
    except MQTTError:
        pass
    assert framer.pending <= len(data)


@FUZZ
@given(data=st.binary(max_size=400), version=versions, chunk=st.integers(1, 64),
       max_packet_size=st.integers(2, 512))
def test_random_streams(data: bytes, version: int, chunk: int, max_packet_size: int) -> None:
    feed_all(data, version, chunk, max_packet_size)


@FUZZ
@given(first=st.integers(0, 255), body=st.binary(max_size=200), version=versions)
def test_random_frames(first: int, body: bytes, version: int) -> None:
    check_frame(first, body, version)


@st.composite
def mutated(draw) -> tuple[int, bytes, int]:
    """(version, mutated wire bytes, chunk size) from a valid encoded packet."""
    version = draw(versions)
    wire = bytearray(encode(draw(any_packet(version)), version))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "set"]))
        at = draw(st.integers(0, max(len(wire) - 1, 0)))
        if op == "flip" and wire:
            wire[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del wire[at:]
        elif op == "insert":
            wire[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and wire:
            del wire[at:at + draw(st.integers(1, 4))]
        elif op == "set" and wire:
            wire[at] = draw(st.sampled_from([0x00, 0x01, 0x02, 0x03, 0x7F, 0x80, 0xFF]))
    return version, bytes(wire), draw(st.integers(1, 64))


@FUZZ
@given(case=mutated())
def test_mutated_packets(case: tuple[int, bytes, int]) -> None:
    version, wire, chunk = case
    feed_all(wire, version, chunk)


@FUZZ
@given(case=mutated())
def test_mutated_bodies_with_a_valid_length(case: tuple[int, bytes, int]) -> None:
    """Keep the frame well formed so that the mutation reaches the decoder itself."""
    version, wire, _ = case
    if wire:
        check_frame(wire[0], wire[2:], version)
