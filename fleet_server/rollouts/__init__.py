"""Staged rollouts (issue 6, docs/ota.md): campaigns that publish ``update_desired`` to the
devices a filter selects, wave by wave, judged on health after the update.

- ``plan``: windows, wave sizes, device order (pure)
- ``engine``: ``decide(policy, devices, now) -> Decision`` (pure)
- ``model``: the tables and state names; ``settings``: the ``[rollouts]`` config section
- ``store``: the database side: create, messages to devices, record ``update_state``, claims
- ``tick``: one engine step of a campaign on the database (rows -> ``decide`` -> writes)
- ``actions``: operator actions (pause, resume, cancel, roll back), release check, read models
- ``runner``: the thread that ticks the engine in the server process
- ``api``: the REST routes, ``schemas``: their bodies; ``pages``: the dashboard pages

Kept free of imports so that ``fleet_server.config`` can load ``settings`` without cycles.
"""
