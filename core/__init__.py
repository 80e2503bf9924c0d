"""What every process of a node shares (worker, router, cluster agent, loadtest): the message
model, its record codecs, the key-value layer of the stores, the node protocol (ops.py) and
the metrics sums.

Imports point one way: worker/, router/, cluster/, loadtest/ -> core/ -> mqtt/, common/.
Nothing here imports from those packages above it.
"""
