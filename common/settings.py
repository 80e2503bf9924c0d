"""The one settings object of a Shoal node.

Every process (circusd hooks, workers, router) builds it once from ``SHOAL_*``
environment variables and passes it down.  circus.ini passes the environment
through unchanged, so this class is the single place where defaults live.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
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

    @field_validator("acl_file", "data_dir", mode="before")
    @classmethod
    def _empty_is_none(cls, v):
        return None if v in ("", None) else v

    @property
    def data_path(self) -> Path:
        return self.data_dir if self.data_dir is not None else Path("data") / str(self.port)

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
