"""Run one script of the Paho interoperability suite against a given port.

``client_test.py`` hands its whole command line to ``unittest.main()``, which
rejects ``-p PORT``; so this runs the script as ``__main__`` with ``-p PORT``
for its own option parsing and gives unittest only the remaining arguments
(test names such as ``Test.test_basic``, ``-v``).

    cd <paho.mqtt.testing>/interoperability
    python3 <shoal>/tests/interop/paho_main.py client_test5.py PORT [unittest args]

Run it with a Python that does not have Shoal installed: the suite has a
package called ``mqtt`` of its own.
"""
from __future__ import annotations

import os
import runpy
import sys
import unittest


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    script, port, *rest = sys.argv[1:]
    here = os.path.dirname(os.path.abspath(script))
    sys.path.insert(0, here)
    os.chdir(here)
    run = unittest.main
    unittest.main = lambda *a, **kw: run(*a, argv=[script, *rest], **kw)
    sys.argv = [script, "-p", port]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
