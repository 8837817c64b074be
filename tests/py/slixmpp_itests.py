"""Run slixmpp's own integration tests (the `itests/` of its PyPI sdist) against a farm.

    PYTHON slixmpp_itests.py --sdist DIR --host 127.0.0.1 --port PORT --ca CA.pem TEST...

DIR is the unpacked sdist (it holds `itests/`); PYTHON has the same slixmpp version installed
(tests/clients.rs and scripts/test.sh use a venv under ~/.cache). TEST names an itests module
(`test_vcard`). The accounts come from the environment as the itests expect (CI_ACCOUNT1,
CI_ACCOUNT1_PASSWORD, CI_ACCOUNT2, ...).

The itests connect by DNS to the JID's domain; here every client is sent to --host/--port
instead and trusts --ca (the farm's demo CA), nothing else is changed. Prints unittest's
report and one line `{"ran": N, "failures": F, "errors": E}`; exits 0 only when all passed.
"""

import argparse
import importlib
import json
import logging
import sys
import unittest


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sdist", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--debug", action="store_true")
    p.add_argument("tests", nargs="+")
    args = p.parse_args()

    sys.path.insert(0, args.sdist)
    from slixmpp.clientxmpp import ClientXMPP

    original = ClientXMPP.connect

    def connect(self, address=None, *a, **kw):
        # Where the farm listens, and its CA; the domain stays the JID's (TLS checks it).
        self.ca_certs = args.ca
        return original(self, address or (args.host, args.port), *a, **kw)

    ClientXMPP.connect = connect

    logging.basicConfig(level=logging.DEBUG if args.debug else 100, stream=sys.stderr)
    suites = [importlib.import_module(f"itests.{t}").suite for t in args.tests]
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(
        unittest.TestSuite(suites)
    )
    print(
        json.dumps(
            {
                "ran": result.testsRun,
                "failures": len(result.failures),
                "errors": len(result.errors),
            }
        )
    )
    sys.exit(0 if result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
