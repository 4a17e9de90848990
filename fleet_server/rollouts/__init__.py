"""Staged rollouts (issue 6, docs/ota.md): campaigns that publish ``update_desired`` to the
devices a filter selects, wave by wave, judged on health after the update.

- ``plan``: windows, wave sizes, device order (pure)
- ``engine``: ``decide(policy, devices, now) -> Decision`` (pure)
- ``store``: the database side: create, record ``update_state``, tick, operator actions
- ``runner``: the thread that ticks the engine in the server process
- ``api``: the REST routes; ``pages``: the dashboard pages

Kept free of imports so that ``fleet_server.config`` can load ``settings`` without cycles.
"""
