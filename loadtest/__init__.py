"""An emqtt-bench style MQTT load generator: ``python -m loadtest conn|sub|pub``;
``python -m loadtest.bench`` for scenarios against Shoal and mosquitto (see README.md)."""
