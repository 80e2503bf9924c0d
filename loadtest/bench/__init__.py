"""``python -m loadtest.bench``: run scenarios against Shoal and mosquitto, alternating, and
write a Markdown report with charts (see ``loadtest/bench/__main__.py``)."""
