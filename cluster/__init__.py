"""The cluster agent of a node: etcd membership and routes, gRPC to the other nodes.

One more member of the node's router (identity ``agent``); it imports only
``mqtt`` and ``common``. Runs only when clustering is configured (see
supervisor/hooks.py); docs/cluster.md describes the design.
"""
