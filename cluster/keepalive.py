"""gRPC keep-alive for the agents' Link (SHOAL_CLUSTER_LINK=grpc, and the Link beside the
direct data link): a peer that stopped answering (its host gone, its agent frozen, a cut with
no FIN) is found within about SHOAL_CLUSTER_LINK_DEAD_AFTER, on both ends.

Without it a Link to a frozen agent stayed open: its kernel still acknowledges TCP, so the
stream looked fine and the publishes queued for that node waited for acks until the node's
lease expired. Each end sends an HTTP/2 PING after a third of the time without traffic and
closes the connection when the PING is not answered within two thirds of it; the server
accepts the clients' PINGs at that rate (gRPC's default refuses pings more often than every
5 minutes without data and ends such a client with GOAWAY "too_many_pings").
"""
from __future__ import annotations


def _times(settings) -> tuple[int, int]:
    ms = int(settings.cluster_link_dead_after * 1000)
    return ms // 3, ms * 2 // 3


def channel_options(settings) -> list[tuple[str, int]]:
    """For grpc.aio.insecure_channel to another node's agent."""
    every, timeout = _times(settings)
    return [("grpc.keepalive_time_ms", every), ("grpc.keepalive_timeout_ms", timeout),
            ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0),
            # gRPC 1.85 ends a connection on a ping unanswered for http2.ping_timeout_ms (a minute
            # by default), whatever keepalive_timeout_ms says: both are set
            ("grpc.http2.ping_timeout_ms", timeout),
            # a restarted node is reached again within a second: gRPC's own backoff doubles to
            # two minutes, and a call made meanwhile waited (wait_for_ready) or failed for it
            ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000)]


def server_options(settings) -> list[tuple[str, int]]:
    """For the agent's grpc.aio.server (Peer.Link, TakeoverSession, AdoptSession)."""
    every, timeout = _times(settings)
    return [("grpc.keepalive_time_ms", every), ("grpc.keepalive_timeout_ms", timeout),
            ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0),
            # the clients ping every `every` ms: take pings that often (half of it, for timer
            # slack) and never end a client for pinging
            ("grpc.http2.min_ping_interval_without_data_ms", every // 2),
            ("grpc.http2.max_ping_strikes", 0), ("grpc.http2.ping_timeout_ms", timeout)]
