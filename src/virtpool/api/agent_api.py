"""The control plane's listener for agents ("the join URL"): HTTPS, the pool CA's certificate.

- ``GET /agent/v1/ca``: the pool CA (public; an enrolling agent checks it against its token);
- ``POST /agent/v1/enrol``: a join token and a certificate request -> the agent's certificate;
- ``POST /agent/v1/heartbeat``: with the agent's certificate; acquires or renews the host's
  lease (control/leases.py) and answers with the revoked serials;
- ``GET /agent/v1/images/NAME/files/FILE``: with a control plane's certificate; this server's
  copy of an image file, for a peer server that lacks it (control/image_peers.py).

Clients show a certificate of the pool CA (checked by TLS) for everything but the first two;
its serial is checked against the revocation list and its name against the host on every
request. Errors are problem+json, like the API's.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from virtpool import __version__
from virtpool.api import problems
from virtpool.control.enrolment import IncompatibleVersion, compatible
from virtpool.control.pool import Pool
from virtpool.model.agent import CONTRACT_VERSION
from virtpool.model.certs import CONTROL_PLANE_CN
from virtpool.model.errors import NotFound, Unauthorized
from virtpool.model.image import IMAGE_FILES
from virtpool.model.lease import HostUsageReport
from virtpool.model.spec import HostInfo
from virtpool.mtls import peer_of, uvicorn_tls

log = logging.getLogger(__name__)


class EnrolBody(BaseModel):
    token: str = Field(max_length=512)
    name: str = Field(max_length=63)
    csr_pem: str = Field(max_length=16384)
    version: str = Field(max_length=32)
    address: str = Field(max_length=300)


class HeartbeatBody(BaseModel):
    name: str = Field(max_length=63)
    epoch: int | None = None
    version: str = Field(max_length=32)
    contract: str = Field(max_length=32)
    address: str = Field(max_length=300)
    host: HostInfo | None = None  # on the first heartbeat of an agent's run
    usage: HostUsageReport | None = None


def create_agent_app(pool: Pool) -> FastAPI:
    app = FastAPI(title="virtpool agents", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None)
    problems.install(app)

    @app.get("/agent/v1/ca")
    def ca() -> Response:
        return Response(pool.ca.cert_file.read_bytes(), media_type="application/x-pem-file")

    @app.post("/agent/v1/enrol")
    def enrol(body: EnrolBody) -> dict[str, str]:
        enrolled = pool.enrolment.enrol(body.token, body.name, body.csr_pem.encode(), body.version,
                                        body.address)
        pool.events.record("host.joined", f"host '{enrolled.name}' joined the pool; its agent "
                           f"answers at {body.address}", data={"host": enrolled.name})
        return {"name": enrolled.name, "cert_pem": enrolled.cert_pem.decode(),
                "ca_pem": enrolled.ca_pem.decode()}

    @app.post("/agent/v1/heartbeat")
    def heartbeat(body: HeartbeatBody, request: Request) -> dict[str, Any]:
        peer = peer_of(request.scope)
        if peer is None:
            raise Unauthorized("an agent calls with its certificate of the pool CA",
                               hint="enrol first: `virtpool agent --join TOKEN`")
        pool.enrolment.check_agent(body.name, peer.serial)
        if not compatible(body.contract):
            raise IncompatibleVersion(f"the agent speaks contract {body.contract}; this control "
                                      f"plane speaks {CONTRACT_VERSION}",
                                      hint="install the same virtpool version on both")
        if body.epoch is None:
            if body.host is not None:
                pool.enrolment.record_inventory(body.name, body.host)
                pool.placer.invalidate(body.name)
            grant = pool.leases.acquire(body.name, address=f"https://{body.address}",
                                        agent_version=body.version)
            pool.agent_joined(body.name)
        else:
            grant = pool.leases.renew(body.name, body.epoch, body.usage)
        return {"epoch": grant.epoch, "interval_s": grant.interval_s, "lease_s": grant.lease_s,
                "revoked": sorted(pool.enrolment.revoked())}

    @app.api_route("/agent/v1/images/{name}/files/{file}", methods=["GET", "HEAD"])
    def image_file(name: str, file: str, request: Request) -> Response:
        peer = peer_of(request.scope)
        if peer is None or peer.common_name != CONTROL_PLANE_CN or peer.serial in pool.enrolment.revoked():
            raise Unauthorized("image files are served to the pool's control planes only",
                               hint="call with a control plane's certificate of the pool CA")
        if file not in IMAGE_FILES:
            raise NotFound(f"an image has no file '{file}'", hint=f"its files: {', '.join(IMAGE_FILES)}")
        chunks = pool.images.local_file(name, file)
        if request.method == "HEAD":
            return Response(status_code=200)
        return StreamingResponse(chunks, media_type="application/octet-stream")

    return app


def start_listener(pool: Pool, host: str, port: int,
                   announce: Callable[[str], None]) -> tuple[threading.Thread, uvicorn.Server, str]:
    """Serve the agent listener in a thread; returns it, its server and its URL."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM,
                         socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    bound = sock.getsockname()[1]
    files = pool.listener_cert(host)
    config = uvicorn.Config(create_agent_app(pool), log_level="warning", access_log=False,
                            **uvicorn_tls(files.cert, files.key, pool.ca.cert_file, require_client=False))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="agent-listener",
                              daemon=True)
    thread.start()
    shown = f"[{host}]" if ":" in host else host
    url = f"https://{shown}:{bound}"
    announce(f"agents join at {url}  (`virtpool host join-token` gives them a token)")
    return thread, server, url
