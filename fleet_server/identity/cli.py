"""``camfleet-server add-user``: the first admin (and any person) from the server's shell."""

from __future__ import annotations

import getpass
import sys

from fleet_server.access.audit import Actor
from fleet_server.access.auth import Authenticator, AuthError
from fleet_server.config import ServerSettings
from fleet_server.db import make_engine, make_sessionmaker
from fleet_server.migrate import upgrade


def add_user(settings: ServerSettings, name: str, role: str) -> int:
    url = settings.db_url()
    upgrade(url)
    engine = make_engine(url)
    try:
        auth = Authenticator(make_sessionmaker(engine))
        by = Actor(f"shell:{getpass.getuser()}", "admin", "local")
        token = auth.create_user(name, role, by)
    except AuthError as exc:
        print(f"camfleet-server: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    # the token is shown once, on stdout only; it is never logged
    print(token)
    return 0
