"""The tests' real Mosquitto: :mod:`dangol_cloud.local_broker` (free loopback port, files in a temp dir), re-exported
so tests import it as ``from tests.broker import MosquittoBroker``."""

from dangol_cloud.local_broker import BrokerError, MosquittoBroker, free_port

__all__ = ["BrokerError", "MosquittoBroker", "free_port"]
