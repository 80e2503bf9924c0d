import pytest

from tests.support.node import Node


@pytest.fixture(scope="module")
def node():
    """One single-worker node for a test module (fast $SYS for the tests that read it)."""
    n = Node(workers=1, sys_interval=1)
    n.start()
    yield n
    n.stop()


@pytest.fixture(scope="module", params=[4, 5], ids=["v311", "v5"])
def version(request):
    return request.param


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and call.when == "call":
        for name in ("node", "node2", "multinode"):
            n = item.funcargs.get(name) if hasattr(item, "funcargs") else None
            if isinstance(n, Node):
                rep.sections.append((f"{name} log (tail)", n.log()[-6000:]))
                rep.sections.append((f"{name} listeners on its port", n.listeners()))
        c = item.funcargs.get("cluster") if hasattr(item, "funcargs") else None
        for n in getattr(c, "nodes", ()):  # the cluster tests' nodes
            rep.sections.append((f"{n.env.get('SHOAL_NODE_NAME')} log (tail)", n.log()[-5000:]))


@pytest.fixture
def clients():
    """Factory for raw clients that are closed after the test:
    ``c = clients.connect(port, "id", version)`` or ``clients.open(port, version)``."""
    from tests.support.raw import RawClient, connect

    opened = []

    class Factory:
        @staticmethod
        def connect(port, client_id, version=4, **kw):
            c = connect(port, client_id, version, **kw)
            opened.append(c)
            return c

        @staticmethod
        def open(port, version=4):
            c = RawClient(port, version)
            opened.append(c)
            return c

    yield Factory
    for c in opened:
        c.close()


@pytest.fixture
def opened():
    """Raw clients a test makes itself (inside a network namespace, say), closed after it:
    the test appends each one."""
    socks: list = []
    yield socks
    for c in socks:
        c.close()
