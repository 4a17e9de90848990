"""The operators' web dashboard: server-rendered pages, inline SVG charts and map, and a
few lines of local JavaScript. Nothing is fetched from outside (no CDN, no map tiles)."""

from fleet_server.dashboard.views import dashboard_router, mount_static

__all__ = ["dashboard_router", "mount_static"]
