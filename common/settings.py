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
    max_packet_size: int = 1024 * 1024  # bytes, advertised to v5 clients
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

    # -- TLS and WebSocket listeners (worker/tls.py, worker/websocket.py) ----
    # 0: the listener is off. Every worker binds each port with SO_REUSEPORT,
    # like SHOAL_PORT. The TLS handshake and the WebSocket upgrade must each
    # finish within connect_timeout seconds.
    tls_port: int = 0  # MQTT over TLS
    tls_certfile: Path | None = None  # PEM server certificate (chain)
    tls_keyfile: Path | None = None  # PEM private key of tls_certfile
    tls_cafile: Path | None = None  # PEM CA(s) that client certificates must chain to
    tls_require_certificate: bool = False  # refuse TLS clients without a valid certificate
    tls_use_identity_as_username: bool = False  # a TLS client's username is its certificate's CN
    ws_port: int = 0  # MQTT over WebSocket (path /mqtt, subprotocol mqtt)
    wss_port: int = 0  # MQTT over WebSocket over TLS (the tls_* certificate settings)

    @field_validator("tls_certfile", "tls_keyfile", "tls_cafile", mode="before")
    @classmethod
    def _empty_tls_path_is_none(cls, v):
        return None if v in ("", None) else v

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
