"""Alerting: Prometheus rule files evaluated by the query engine, webhook notifications.

Pure: ``rules`` (rule-file parsing), ``template`` (annotation templating), ``state`` (the
alert state machine), ``payload`` (webhook and API formats).  Adapters: ``evaluator`` (the
interval loop over the query engine) and ``webhook`` (aiohttp sender).
"""
