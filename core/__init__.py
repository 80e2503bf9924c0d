"""What every process of a node shares (worker, router, cluster agent): the message
model, its record codecs and the key-value layer of the stores. Imports only mqtt/
and common/."""
