"""``camfleet-server add-user``: the first admin (and any person) from the server's shell."""

from __future__ import annotations

import getpass

from fleet_server.access.audit import Actor
from fleet_server.access.auth import Authenticator
from fleet_server.config import ServerSettings
from fleet_server.db import make_engine, make_sessionmaker
from fleet_server.migrate import upgrade


def add_user(settings: ServerSettings, name: str, role: str) -> str:
    """The new person's API token; AuthError when the name or role is refused."""
    url = settings.db_url()
    upgrade(url)
    engine = make_engine(url)
    try:
        auth = Authenticator(make_sessionmaker(engine))
        by = Actor(f"shell:{getpass.getuser()}", "admin", "local")
        return auth.create_user(name, role, by)
    finally:
        engine.dispose()
