"""The one settings object of a Shoal node.

Every process (circusd hooks, workers, router) builds it once from ``SHOAL_*``
environment variables and passes it down.  circus.ini passes the environment
through unchanged, so this class is the single place where defaults live.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHOAL_", extra="ignore")

    # -- node -------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 1883
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1)
    data_dir: Path | None = None  # default: data/<port>, so nodes on one host never share a store
    node_name: str = ""  # default: "<hostname>-<port>"
    log_level: str = "INFO"
    run_dir: Path = Path("/tmp")  # ZeroMQ ipc endpoints of the node live here
    router_batch_ms: float = 1.0  # how long a worker gathers messages for one send to the router
    # -- routercpu (issue 10): a worker batches toward its router only above this rate ---------
    router_batch_rate: float = 2000.0  # messages/s a worker queues for its router; above: batch

    # -- MQTT limits ------------------------------------------------------
    # bytes, advertised to v5 clients. A connection makes its worker hold at most this much
    # (plus one socket read) of a packet it is still receiving.
    max_packet_size: int = 16 * 1024 * 1024
    receive_maximum: int = 100  # QoS 1/2 publishes a client may have unacknowledged
    max_inflight: int = 100  # outgoing QoS 1/2 window per client (capped by its Receive Maximum)
    max_queued_messages: int = 1000  # offline / over-window queue per session
    max_keepalive: int = 60  # v5 clients asking more (or 0) get this as Server Keep Alive; 0: no cap
    topic_alias_maximum: int = 10
    max_session_expiry: int = 0  # 0: no cap; otherwise caps requested expiry (seconds)
    persistent_session_expiry: int = 0  # v3 clean_session=0 sessions; 0: never expire
    allow_anonymous: bool = True
    acl_file: Path | None = None
    retain_available: bool = True
    max_retained_messages: int = 100_000
    connect_timeout: float = 10.0

    # -- $SYS -------------------------------------------------------------
    sys_interval: float = 10.0  # seconds between $SYS updates; 0 disables

    # -- persistence ------------------------------------------------------
    persistence: bool = True
    sync: Literal["always", "batch", "off"] = "batch"

    # -- operating a node: metrics, health, admin API, logs (issue 12) ----------
    metrics_port: int = Field(default=0, ge=0, le=65535)  # 0: no TCP listener (the admin socket in run_dir is always there)
    metrics_host: str = ""  # default: SHOAL_HOST
    admin_token: str = ""  # when set, /api/... asks for "Authorization: Bearer <token>"
    admin_max_rows: int = Field(default=10_000, ge=1)  # most rows one admin request returns per worker
    admin_max_request: int = Field(default=8192, ge=512)  # bytes of one HTTP request (line, headers, body)
    admin_max_connections: int = Field(default=64, ge=1)  # HTTP connections open at once (more: closed at once)
    log_format: Literal["kv", "json"] = "kv"

    # -- authentication and limits that protect the node (issue 12) ---------
    password_file: Path | None = None  # mosquitto_passwd format ($7$ PBKDF2-SHA512, $6$ SHA512)
    auth_threads: int = 2  # threads hashing passwords, beside the event loop
    auth_inline_iterations: int = 200  # a $7$ hash of at most this many rounds (~0.1 ms) is computed in place; 0: never
    auth_queue: int = 1000  # CONNECTs waiting for a hash per worker; more: 0x89 server busy
    auth_cache: int = 10_000  # successful verifications remembered (reconnects skip the hash); 0: off
    auth_fail_window: float = 60.0  # seconds a failed login from an address is remembered
    auth_fail_delay_after: int = 3  # failures in the window after which the address is slowed; 0: never
    auth_fail_delay: float = 1.0  # seconds each CONNECT of a slowed address waits
    auth_ban_after: int = 10  # failures in the window after which the address is refused; 0: never
    auth_ban_time: float = 60.0  # seconds a refused address stays refused
    auth_fail_addresses: int = 10_000  # addresses whose failures are tracked per worker (oldest forgotten)
    max_connections: int = 0  # clients per node, shared out between the workers; 0: no limit
    max_publish_rate: float = 0.0  # PUBLISH packets per second per client (reading pauses past it); 0: off

    # -- cluster (issue 10): on when SHOAL_ETCD_ENDPOINTS or SHOAL_ETCD_INITIAL_CLUSTER is set
    etcd_endpoints: str = ""  # external etcd: "http://host:port,..."
    etcd_initial_cluster: str = ""  # embedded etcd member: etcd's "name=peerURL,..." form
    etcd_peer_url: str = ""  # embedded member's peer URL; default http://127.0.0.1:<port+30000>
    etcd_client_url: str = ""  # embedded member's client URL; default http://127.0.0.1:<port+20000>
    cluster_addr: str = ""  # host:port of this node's agent (gRPC); default <host>:<port+10000>
    cluster_lease_ttl: int = 5  # seconds: a node that stops renewing its lease is dropped after this
    cluster_max_queued: int = 10_000  # messages queued per peer node before push back (QoS 0: dropped, counted)
    cluster_batch: int = 500  # messages per gRPC frame at most
    # -- sessions across the cluster (issue 11) --
    # a node that can no longer keep its etcd lease (cut off, frozen) disconnects its clients
    # (v5 0x9C, use another server) and refuses CONNECTs until it holds a lease again
    # (`disconnect`); `serve`: it goes on serving them alone (issue 10's behaviour; a client
    # id may then have a second live session on the other side of a partition)
    cluster_lease_loss: Literal["disconnect", "serve"] = "disconnect"
    # -- cluster correctness (issue 10, haproxy helper) --
    # seconds a cleared retained message is remembered in etcd (an empty record under a lease),
    # so that a node that was away and comes back with the old message does not bring it back
    cluster_retained_tombstone_ttl: int = 86_400
    # -- the cross-node publish hop (issue 10, hop helper) --
    # what carries the peer Link between agents: `grpc` (Peer.Link, proto/cluster.proto) or
    # `tcp`: the same Frames, length-prefixed on a plain TCP connection the event loop reads
    # itself (cluster/tcplink.py; a node advertises its address in etcd, a peer that does
    # not is dialled over gRPC). TakeoverSession and AdoptSession stay on gRPC.
    # (default `direct` since issue 10's directdef helper: the publishes go straight to the
    # other node's router, cluster/datalink.py; the Link carries the rest)
    cluster_link: Literal["grpc", "tcp", "direct"] = "direct"
    cluster_link_addr: str = ""  # host:port of the tcp link; default: SHOAL_CLUSTER_ADDR's host, a free port
    cluster_max_frame: int = 64 * 1024 * 1024  # bytes of one peer frame received at most (gRPC and tcp)
    cluster_frame_bytes: int = 1024 * 1024  # a frame leaves once its messages reach this many bytes
    # -- a peer Link that never says hello, or went dead (issue 10, lead) --
    cluster_hello_timeout: float = 10.0  # seconds a new Link (either side) waits for the other's hello
    # tcp link: a connection whose peer is gone (host down, cable cut) is closed after about this
    # many seconds (TCP keep-alive while idle, TCP_USER_TIMEOUT while data waits unacknowledged)
    cluster_link_dead_after: float = 15.0
    # -- the direct data link (issue 10, hopcpu helper): SHOAL_CLUSTER_LINK=direct --
    # where the router takes the other nodes' publishes (ZeroMQ tcp); default: the host of
    # SHOAL_CLUSTER_ADDR, a free port (it goes in the node's etcd record)
    cluster_data_addr: str = ""
    # -- the direct data link as the default (issue 10, directdef helper) --
    # seconds a peer's data link may have no connection while publishes wait for it (its
    # address unreachable: a firewall, a wrong SHOAL_CLUSTER_DATA_ADDR host) before they go
    # over the agents' Link instead; the data link is tried again in the background
    cluster_data_fallback_after: float = 5.0
    # -- the router sends the other nodes' publishes itself (issue 10, routersend helper) --
    # on (the default; with SHOAL_CLUSTER_LINK=direct): the router sends each publish for
    # another node straight to that node's router and takes its CONFIRMs (router/sender.py),
    # the agent off the data path (it keeps the control plane and tells the router the peers
    # and their routes); off: the agent sends them (cluster/peers.py), as before
    cluster_router_sends: bool = True
    # -- a session moving between nodes (issue 11 point 2, move helper) --
    # seconds after a session went to another node during which what still arrives here for
    # it is forwarded to that node (router/away.py), and during which that node drops a
    # message that reached the session both ways
    cluster_move_window: float = 5.0
    # messages forwarded per moved session in that window at most (beyond: dropped, counted,
    # logged with the client id); also the ids the new node remembers per arrived session
    cluster_move_max_messages: int = 10_000
    # -- owner transactions: the claims and ends of client ids in etcd (issue 11, connrate4 helper) --
    # transactions under way at once at most (cluster/ownership.py Batcher)
    cluster_owner_txns: int = 8
    # records waiting that start one more transaction beside those under way (1: what gathers
    # in a loop pass goes at its end, up to cluster_owner_txns under way); fewer wait for one
    # to end and go together in the next (group commit; 32 before this setting)
    cluster_owner_fill: int = 1
    # -- the subscribe path at scale (issue 10, subscribe helper) --
    # SUBSCRIBEs of one connection handled while earlier ones still wait for their routes
    # (SUBACK = routed on every worker and node); beyond, that connection is not read
    max_subscribes_waiting: int = Field(default=16, ge=1)
    # new filters of one worker waiting for their routes; beyond, a connection's next
    # SUBSCRIBE waits (its reading pauses) until some are routed. The node's bound is
    # SHOAL_WORKERS times this. One SUBSCRIBE with more filters still goes alone.
    max_filters_waiting: int = Field(default=5_000, ge=1)

    @property
    def clustered(self) -> bool:
        return bool(self.etcd_endpoints.strip() or self.etcd_initial_cluster.strip())

    @property
    def cluster_address(self) -> str:
        return self.cluster_addr or f"{self.host}:{self.port + 10000}"

    @property
    def etcd_member_client_url(self) -> str:
        return self.etcd_client_url or f"http://127.0.0.1:{self.port + 20000}"

    @property
    def etcd_member_peer_url(self) -> str:
        return self.etcd_peer_url or f"http://127.0.0.1:{self.port + 30000}"

    @property
    def etcd_client_endpoints(self) -> list[str]:
        """Where the agent reaches etcd: SHOAL_ETCD_ENDPOINTS, else the embedded member."""
        if self.etcd_endpoints.strip():
            return [e.strip() for e in self.etcd_endpoints.split(",") if e.strip()]
        return [self.etcd_member_client_url]

    # -- TLS and WebSocket listeners (worker/tls.py, worker/websocket.py) ----
    # 0: the listener is off. Every worker binds each port with SO_REUSEPORT,
    # like SHOAL_PORT. The TLS handshake and the WebSocket upgrade must each
    # finish within connect_timeout seconds.
    tls_port: int = Field(default=0, ge=0, le=65535)  # MQTT over TLS
    tls_certfile: Path | None = None  # PEM server certificate (chain)
    tls_keyfile: Path | None = None  # PEM private key of tls_certfile
    tls_cafile: Path | None = None  # PEM CA(s) that client certificates must chain to
    tls_require_certificate: bool = False  # refuse TLS clients without a valid certificate
    tls_use_identity_as_username: bool = False  # a TLS client's username is its certificate's CN
    ws_port: int = Field(default=0, ge=0, le=65535)  # MQTT over WebSocket (path /mqtt, subprotocol mqtt)
    wss_port: int = Field(default=0, ge=0, le=65535)  # MQTT over WebSocket over TLS (the tls_* certificate settings)

    @field_validator("tls_certfile", "tls_keyfile", "tls_cafile", mode="before")
    @classmethod
    def _empty_tls_path_is_none(cls, v):
        return None if v in ("", None) else v

    @field_validator("acl_file", "data_dir", "password_file", mode="before")
    @classmethod
    def _empty_is_none(cls, v):
        return None if v in ("", None) else v

    @property
    def data_path(self) -> Path:
        return self.data_dir if self.data_dir is not None else Path("data") / str(self.port)

    @property
    def cluster_member_file(self) -> Path:
        """Written by the agent when the node first joins a cluster and never removed: a node
        that was a member (restarted after a crash or a SIGTERM) serves clients only under a
        lease, since its client ids may be owned elsewhere by now (issue 11); a node that never
        joined serves its local clients alone until it does (issue 10)."""
        return self.data_path / "cluster-member"

    @property
    def node(self) -> str:
        if self.node_name:
            return self.node_name
        import socket

        return f"{socket.gethostname()}-{self.port}"

    def ipc(self, name: str) -> str:
        """A ZeroMQ ipc endpoint private to this node (nodes differ by port)."""
        return f"ipc://{self.run_dir}/shoal-{self.port}-{name}.sock"

    @property
    def router_endpoint(self) -> str:
        return self.ipc("router")

    @property
    def ops_endpoint(self) -> str:
        """Workers answer the router's health and admin questions here."""
        return self.ipc("ops")

    @property
    def admin_socket(self) -> Path:
        """The HTTP admin/metrics API on a Unix socket, always served by the router."""
        return self.run_dir / f"shoal-{self.port}-admin.sock"


# -- settings checked at start (issue 12, point 8) ---------------------------
# Ranges of the numeric settings; a field missing here only gets its type checked.
BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "port": (0, 65535),
    "workers": (1, 1024),
    "router_batch_ms": (0, 1000),
    "router_batch_rate": (0, 100_000_000),  # (routercpu)
    "max_packet_size": (16, 268_435_455),
    "cluster_max_frame": (65_536, 2_147_483_647),  # (hop helper)
    "cluster_frame_bytes": (1, None),  # (hop helper)
    "cluster_hello_timeout": (0.1, 3600),
    "cluster_link_dead_after": (3, 3600),
    "cluster_data_fallback_after": (0.5, 3600),  # (directdef helper)
    "receive_maximum": (1, 65535),
    "max_inflight": (1, 65535),
    "max_queued_messages": (0, None),
    "max_keepalive": (0, 65535),
    "topic_alias_maximum": (0, 65535),
    "max_session_expiry": (0, 4_294_967_295),
    "persistent_session_expiry": (0, 4_294_967_295),
    "max_retained_messages": (0, None),
    "connect_timeout": (0.001, None),
    "sys_interval": (0, None),
    "auth_threads": (1, 64),
    "auth_inline_iterations": (0, None),
    "auth_queue": (1, None),
    "auth_cache": (0, None),
    "auth_fail_window": (0.001, None),
    "auth_fail_delay_after": (0, None),
    "auth_fail_delay": (0, 60),
    "auth_ban_after": (0, None),
    "auth_ban_time": (0, None),
    "auth_fail_addresses": (1, None),
    "max_connections": (0, None),
    "max_publish_rate": (0, None),
    "cluster_retained_tombstone_ttl": (10, 9_000_000_000),
    "cluster_move_window": (0.1, 600),  # (move helper)
    "cluster_move_max_messages": (1, 10_000_000),
    "cluster_owner_txns": (1, 64),  # (connrate4 helper)
    "cluster_owner_fill": (1, 100),
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# SHOAL_ variables that are not settings but are read elsewhere
OTHER_VARIABLES = frozenset({"SHOAL_WORKER_ID"})


class SettingsError(ValueError):
    """One or more bad SHOAL_* values; each line names the variable, its value and what is allowed."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def _var(field: str) -> str:
    return f"SHOAL_{field.upper()}"


def known_variables() -> set[str]:
    """Every SHOAL_ name Shoal reads, derived from the Settings fields (so new settings are known at once)."""
    return {_var(f) for f in Settings.model_fields} | set(OTHER_VARIABLES)


def unknown_variables(environ=None) -> list[tuple[str, str | None]]:
    """SHOAL_ variables in the environment that no setting reads, each with the closest known name (or None)."""
    env = os.environ if environ is None else environ
    known = known_variables()
    suffixes = sorted(k[6:] for k in known)  # compare without the common prefix
    out = []
    for name in sorted(env):
        if name.upper().startswith("SHOAL_") and name.upper() not in known:
            close = difflib.get_close_matches(name.upper()[6:], suffixes, n=1, cutoff=0.6)
            out.append((name, f"SHOAL_{close[0]}" if close else None))
    return out


def _allowed(lo, hi) -> str:
    if hi is None:
        return f"a number >= {lo}"
    return f"a number from {lo} to {hi}"


def load(environ=None) -> Settings:
    """The Settings, with every value checked: SettingsError lists each bad
    variable with its value and what it allows (values of the wrong type
    first; ranges once every type is right)."""
    env = os.environ if environ is None else environ
    problems: list[str] = []
    try:
        if environ is None:
            settings = Settings()
        else:  # an explicit environment (tests, hooks): read only that
            values = {k[6:].lower(): v for k, v in env.items() if k.upper().startswith("SHOAL_")
                      and k[6:].lower() in Settings.model_fields}
            settings = Settings(**values)
    except ValidationError as e:
        for err in e.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            name = _var(field)
            raw = next((v for k, v in env.items() if k.upper() == name), err.get("input"))
            problems.append(f"{name}={raw!r}: {err['msg'].replace('Input should', 'should')}")
        raise SettingsError(problems) from None
    for field, (lo, hi) in BOUNDS.items():
        v = getattr(settings, field)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raw = next((val for k, val in env.items() if k.upper() == _var(field)), v)
            problems.append(f"{_var(field)}={raw!r}: should be {_allowed(lo, hi)}")
    if settings.log_level.upper() not in LOG_LEVELS:
        problems.append(f"SHOAL_LOG_LEVEL={settings.log_level!r}: should be one of {', '.join(LOG_LEVELS)}")
    if problems:
        raise SettingsError(problems)
    return settings
