"""Test support: start real nodes under circusd, speak raw MQTT.

- node.py, cluster.py: nodes (and clusters with etcd) under circusd, as the README starts them
- raw.py: a raw MQTT client on a blocking socket; transports.py: the same over TLS and WebSocket
- wire.py: MQTT bytes written out by hand, independent of the broker's codec (raw.py speaks it)
- clients.py: the one set of client steps: persistent, subscribe, publish, publish_all, receive
- fakes.py: a fake clock and a fake transport for unit tests of the worker's connections
- certs.py, js.py: test certificates, the MQTT.js clients
"""
