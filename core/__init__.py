"""What every process of a node shares (worker, router, cluster agent, loadtest).

Imports point one way: worker/, router/, cluster/, loadtest/ -> core/ -> mqtt/, common/.
Nothing here imports from those packages above it.
"""
