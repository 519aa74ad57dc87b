"""The core tests here reuse the real-parts ``setup`` fixture of the Broker.decide tests."""

from tests.test_broker_decide import setup  # noqa: F401
