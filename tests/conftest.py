"""Suite-wide guards."""

import pytest


def pytest_collection_modifyitems(session, config, items):
    # A run that collects nothing must fail loudly, never pass as "no tests ran".
    if not items:
        raise pytest.UsageError("no tests collected: check the test paths and -k/-m filters")
