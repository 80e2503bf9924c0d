"""Test support: start real nodes under circusd, speak raw MQTT."""
