"""The browser dashboard under `/ui`: server-rendered pages over the store, behind the API's identity.

Modules: `session` (sign-in, sessions, cookies, CSRF), `web` (the guard every page runs behind, forms, parameters),
`html` and `charts` (escaped markup and server-side SVG), `pages/*` (one module per page group) and `routes`
(the route list `create_app` mounts). Reads go through `gengate.store.dashboard`. See docs/dashboard.md.
"""

from gengate.dashboard.routes import dashboard_routes

__all__ = ["dashboard_routes"]
