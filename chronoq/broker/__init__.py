"""Brokers: how workers learn which tasks to run.

* :class:`StoreBroker` (default) claims straight from the store with ``FOR UPDATE SKIP
  LOCKED`` and is woken in-process or by PostgreSQL LISTEN/NOTIFY; on PostgreSQL it also
  holds the tasks handed off to its worker until the worker's next fetch.
* :class:`RedisBroker` (``CHRONOQ_BROKER_URL=redis://…``) carries "task X is ready"
  messages on Redis Streams, one per queue and priority band, with consumer groups; the
  store stays the source of truth and a reconciler re-publishes what Redis lost.
"""

from chronoq.broker.base import Broker, BrokerFactory, Consumer
from chronoq.broker.store import StoreBroker

__all__ = ["Broker", "BrokerFactory", "Consumer", "StoreBroker"]
