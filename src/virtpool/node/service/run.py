"""`virtpool agent`: enrol (first start) or load the identity, then serve and heartbeat."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import uvicorn

from virtpool.model.errors import InvalidRequest
from virtpool.mtls import nothing_was_cut, uvicorn_tls
from virtpool.node.agent import LocalAgent
from virtpool.node.service import identity as ids
from virtpool.node.service.app import Revocations, create_app
from virtpool.node.service.heartbeat import Heartbeat

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentOptions:
    server: str
    data_dir: Path
    join: str | None = None
    listen_host: str = "0.0.0.0"
    listen_port: int = 8472
    name: str | None = None
    net_prefix: str = "vp"


def serve(options: AgentOptions, announce: Callable[[str], None] = print) -> None:
    os.umask(0o077)
    options.data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(options.data_dir, 0o711 if os.geteuid() == 0 else 0o700)
    # Bound first: the address it enrols with names the port it will serve on.
    sock = socket.socket(socket.AF_INET6 if ":" in options.listen_host else socket.AF_INET,
                         socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((options.listen_host, options.listen_port))
    sock.listen(512)
    port = sock.getsockname()[1]
    host = ids.advertised_host(options.server, options.listen_host)
    shown = f"[{host}]" if ":" in host else host
    address = f"{shown}:{port}"
    identity = ids.load(options.data_dir, options.server)
    if identity is None:
        if not options.join:
            raise InvalidRequest("this agent has not joined a pool yet",
                                 hint="pass --join TOKEN (from `virtpool host join-token`)")
        name = options.name or socket.gethostname()
        identity = ids.enrol(options.data_dir, options.server, options.join, name, address)
        announce(f"agent {identity.name} joined the pool at {options.server}")
    elif options.name and options.name != identity.name:
        raise InvalidRequest(f"this data dir belongs to host '{identity.name}', not '{options.name}'",
                             hint="drop --name, or use another --data-dir")
    ids.check_key(identity)
    agent = LocalAgent(options.data_dir, net_prefix=options.net_prefix)
    adopted = agent.adopt_running()
    if adopted:
        log.info("adopted %d running VM(s) of the previous agent", len(adopted))
    revoked = Revocations(options.data_dir / "revoked.json")

    def refused(why: str) -> None:
        log.error("the control plane refuses this agent: %s", why)

    heartbeat = Heartbeat(identity, agent, address, revoked, refused)
    try:
        app = create_app(agent, revoked, options.data_dir / "uploads")
        config = uvicorn.Config(app, log_level="warning", access_log=False,
                                **uvicorn_tls(identity.cert, identity.key, identity.ca, require_client=True))
        logging.getLogger("uvicorn.error").addFilter(nothing_was_cut)
        heartbeat.start()
        announce(f"agent {identity.name} serving https://{address}")
        _Server(config, on_exit=agent.feed.release_readers).run(sockets=[sock])
    finally:
        heartbeat.stop()
        agent.close()


class _Server(uvicorn.Server):
    """uvicorn's server, which also ends the event feed's long polls as soon as a stop is
    asked: uvicorn waits for open requests, and the control planes always hold one."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)
