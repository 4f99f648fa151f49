"""Every ``web.AppKey`` of the application, in one place."""

from aiohttp import web

from config.settings import Config
from service.correlation import CorrelationIds
from service.issuer import Issuer

CONFIG = web.AppKey("config", Config)
CORRELATION_IDS = web.AppKey("correlation_ids", CorrelationIds)
ISSUER = web.AppKey("issuer", Issuer)
