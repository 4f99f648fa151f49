"""Every ``web.AppKey`` of the application, in one place."""

import concurrent.futures

from aiohttp import web

from allocator.client import AllocatorClient
from config.settings import Config
from ledger.client import LedgerClient
from ledger.postgres import SharedReads
from service.access_log import AccessLog
from service.blocks import Issuer
from service.correlation import CorrelationIds
from service.metrics import WorkerMetrics
from service.s10_blocks import S10Issuer

CONFIG = web.AppKey("config", Config)
CORRELATION_IDS = web.AppKey("correlation_ids", CorrelationIds)
ACCESS_LOG = web.AppKey("access_log", AccessLog)
METRICS = web.AppKey("metrics", WorkerMetrics)
CLIENT = web.AppKey("allocator_client", AllocatorClient)
ISSUER = web.AppKey("issuer", Issuer)
S10_ISSUER = web.AppKey("s10_issuer", S10Issuer)
# None with the ledger off (``ledger = false``).
LEDGER = web.AppKey("ledger", LedgerClient | None)
# The worker's connections for reading the shared ledger: None unless the ledger is on with a
# PostgreSQL store.
SHARED_READS = web.AppKey("shared_reads", SharedReads | None)
# The worker's one thread that draws shipping labels (service/labels.py).
LABEL_DRAWER = web.AppKey("label_drawer", concurrent.futures.ThreadPoolExecutor)
