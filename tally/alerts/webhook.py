"""Webhook sender (adapter): POSTs Alertmanager-format JSON to every configured URL.

A receiver that fails (connection error, timeout, non-2xx) is retried with backoff a few
times; what still fails is counted and logged, never raised into the evaluator.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import aiohttp

log = logging.getLogger(__name__)


class WebhookSender:
    """Sends payloads to ``urls``; ``counts`` has sent / failed / retried per URL."""

    def __init__(self, urls, timeout_s: float = 10.0, attempts: int = 3, backoff_s: float = 0.5,
                 session: aiohttp.ClientSession | None = None):
        self.urls = tuple(urls)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._session = session
        self._own_session = session is None
        self.counts: Counter = Counter()

    async def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def send(self, payload: dict) -> None:
        """Deliver one payload to every URL concurrently."""
        if self.urls:
            await asyncio.gather(*(self._send_one(url, payload) for url in self.urls))

    async def _send_one(self, url: str, payload: dict) -> bool:
        session = await self._client()
        for attempt in range(1, self._attempts + 1):
            try:
                async with session.post(url, json=payload, timeout=self._timeout) as resp:
                    if 200 <= resp.status < 300:
                        self.counts[f"sent {url}"] += 1
                        return True
                    # 4xx other than 429 will not get better by retrying
                    error = f"HTTP {resp.status}"
                    if 400 <= resp.status < 500 and resp.status != 429:
                        break
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                error = repr(exc)
            if attempt < self._attempts:
                self.counts[f"retried {url}"] += 1
                await asyncio.sleep(self._backoff_s * 2 ** (attempt - 1))
        self.counts[f"failed {url}"] += 1
        log.warning("alert webhook %s failed (%s): %s %s", url, error, payload.get("status"),
                    payload.get("groupLabels"))
        return False

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None
