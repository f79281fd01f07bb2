"""``tally gateway``: build the gateway from the one TallyConfig and serve it."""

from __future__ import annotations

import logging

from aiohttp import web

from tally.auth import KeyRing
from tally.config import TallyConfig
from tally.gateway.app import Gateway, make_app
from tally.gateway.writer import PointWriter
from tally.limits import Limits


def build(cfg: TallyConfig) -> Gateway:
    """The gateway of a config: key ring from cfg.api_keys_file (auth off without one),
    limits from the limit_* fields, a Kafka writer to cfg.points_topic."""
    keyring = KeyRing.from_file(cfg.api_keys_file) if cfg.api_keys_file else KeyRing.open()
    return Gateway(cfg=cfg, writer=PointWriter(cfg), keyring=keyring, limits=Limits.from_config(cfg))


def main(cfg: TallyConfig, listen_host: str | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    gateway = build(cfg)
    host = listen_host or cfg.host
    auth = f"API keys from {cfg.api_keys_file}" if cfg.api_keys_file else "authentication OFF (no api_keys_file)"
    logging.getLogger(__name__).info("gateway on http://%s:%d (%s), Kafka %s topic %s", host, cfg.ports.gateway,
                                     auth, cfg.kafka_bootstrap, cfg.points_topic)
    try:
        web.run_app(make_app(gateway), host=host, port=cfg.ports.gateway, print=None)
    finally:
        gateway.writer.close()
    return 0
