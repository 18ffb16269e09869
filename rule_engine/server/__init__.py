"""``rule-engine serve``: the HTTP API, the live dashboard and ``/metrics`` (extra ``rule_engine[server]``).

:func:`rule_engine.server.app.create_app` builds the ASGI application over one or more managers.
"""
