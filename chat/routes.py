"""HTTP routes beside Socket.IO: health, readiness, metrics and the page.

``/healthz`` answers while the process can serve (NGINX and Docker use it to
decide whether the replica is alive); ``/readyz`` answers 503 while the Redis
backplane is unusable, so an orchestrator can hold traffic back from a
replica that could only reach its own clients.  ``/replicas`` lists every
replica of the chat with its health, whichever replica answers.
"""

from __future__ import annotations

from aiohttp import web

from .appkeys import MANAGER, METRICS, NAMESPACE, REGISTRY, SETTINGS
from .metrics import CONTENT_TYPE


async def healthz(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    ready, reason = await request.app[MANAGER].ready()
    return web.json_response({
        "status": "ok",
        "server": settings.server_id,
        "mode": settings.mode,
        "clients": len(request.app[NAMESPACE].clients),
        "backplane": "ok" if ready else reason,
        # "open": anyone connects under any free name; else the algorithm
        # tokens must be signed with (chat/auth.py).
        "auth": request.app[NAMESPACE].identities.algorithm or "open",
    })


async def readyz(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    ready, reason = await request.app[MANAGER].ready()
    body = {"ready": ready, "server": settings.server_id, "mode": settings.mode,
            "reason": reason}
    return web.json_response(body, status=200 if ready else 503)


async def replicas(request: web.Request) -> web.Response:
    """Every replica of the chat and its health (``chat/replicas.py``)."""
    return web.json_response({"replicas": await request.app[REGISTRY].list()})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def page(request: web.Request) -> web.StreamResponse:
    """Serve a top-level file of ``web/`` (NGINX does this in the cluster)."""
    name = request.match_info.get("name") or "index.html"
    path = request.app[SETTINGS].web_dir / name
    if not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path)


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/replicas", replicas)
    web_dir = app[SETTINGS].web_dir
    if web_dir.is_dir():
        app.router.add_get("/", page)
        # The name pattern admits no slash, so nothing outside web/ is served.
        app.router.add_get(r"/{name:[A-Za-z0-9_-][A-Za-z0-9_.-]*}", page)
        if (web_dir / "vendor").is_dir():
            app.router.add_static("/vendor", web_dir / "vendor")
