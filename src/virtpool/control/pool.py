"""The control plane of one pool: database, services and the agent(s) they drive.

The caller hands in this host's agent (or none), so that this layer never imports the node
package: single-node mode passes a ``LocalAgent``; `virtpool server` passes none. Every other
host is reached through the registry (control/agents/registry.py).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.registry import CollectorRegistry

from virtpool import __version__
from virtpool.control import ca_store
from virtpool.control.agents.feed import EventPump
from virtpool.control.agents.registry import AgentRegistry
from virtpool.control.agents.remote import RemoteAgent
from virtpool.control.audit import AuditLog
from virtpool.control.auth import TokenService
from virtpool.control.balancer import MemoryBalancer, MemoryPolicy
from virtpool.control.detached import NoAgent
from virtpool.control.enrolment import Enrolment
from virtpool.control.events import EventLog
from virtpool.control.groups import GroupService
from virtpool.control.hosts import HostService
from virtpool.control.idempotency import IdempotentCreates
from virtpool.control.image_peers import PeerImages
from virtpool.control.images import SYNC_PERIOD_S, ImageService
from virtpool.control.interrupted_creates import cut_off_creates, settle_cut_off
from virtpool.control.networks import NetworkService
from virtpool.control.secgroups import SecGroupService
from virtpool.control.leases import Leadership, LeaseService, LocalHeartbeat, Loop
from virtpool.control.metrics import ControlPlaneMetrics, PoolCollector, Scrape
from virtpool.control.operations import OperationService, instance_id
from virtpool.control.pki import Files
from virtpool.control.placement import Placer
from virtpool.control.projects import ProjectService
from virtpool.control.rebalancing import Rebalancer
from virtpool.control.settings import SettingsService
from virtpool.control.store import db
from virtpool.control.summary import Summary
from virtpool.control.usage_history import UsageRecorder
from virtpool.control.vm_operations import VMOperations
from virtpool.control.warm_vms import REFILL_PERIOD_S, WarmVMs
from virtpool.control.backups import BackupService
from virtpool.control.clones import CloneService
from virtpool.control.snapshots import SnapshotService
from virtpool.control.vms import DEFAULT_BOOT_TIMEOUT_S, VMService
from virtpool.model.agent import Agent, ImageStoreContract
from virtpool.model.certs import CONTROL_PLANE_CN
from virtpool.model.errors import VirtpoolError
from virtpool.model.layout import TOKEN_FILE, URL_FILE
from virtpool.model.lease import MONITOR_PERIOD_S

log = logging.getLogger(__name__)
NETWORK_ROUND_S = 30.0  # how soon a host's networks heal after a converge it missed
BACK_ATTEMPTS, BACK_RETRY_S = 5, 5.0  # converging a host that came back


@dataclass(frozen=True)
class PoolConfig:
    data_dir: Path
    db_url: str | None = None  # default: SQLite in the data dir
    boot_timeout: float = DEFAULT_BOOT_TIMEOUT_S
    memory: MemoryPolicy = field(default_factory=MemoryPolicy)
    # `virtpool server`: no agent on this host, so nothing to reconcile, balance or resume.
    control_only: bool = False
    # The pool CA's passphrase (control/ca_store.py); None: the data dir's pki/ca.passphrase,
    # made on the pool's first start.
    ca_passphrase_file: Path | None = None
    # This host's VXLAN address (`virtpool up --vtep`): networks span it and the joined hosts.
    vtep: str | None = None

    @property
    def token_file(self) -> Path:
        return self.data_dir / TOKEN_FILE

    @property
    def url_file(self) -> Path:
        return self.data_dir / URL_FILE


class Pool:
    """Everything the API needs, wired together. ``start()`` reconciles before serving."""

    def __init__(self, config: PoolConfig, agent: Agent | None,
                 images: ImageStoreContract | None = None) -> None:
        self.config = config
        self.agent: Agent = agent if agent is not None else NoAgent()
        self.engine = db.open_database(config.db_url or db.sqlite_url(config.data_dir / "state.db"))
        sessions = db.session_factory(self.engine)
        self.metrics = ControlPlaneMetrics()
        self.tokens = TokenService(sessions)
        self.projects = ProjectService(sessions, on_delete=self.tokens.forget_project)
        self.events = EventLog(sessions)
        self.audit = AuditLog(sessions)
        self.settings = SettingsService(sessions)
        self.placer = Placer(self.settings.weigher, observe=self.metrics.placement_seconds.observe)
        self.hosts = HostService(sessions, self.placer, socket.gethostname(), self.events)
        self.groups = GroupService(sessions)
        self.networks = NetworkService(sessions)
        self.secgroups = SecGroupService(sessions)
        self.rebalancer = Rebalancer(sessions)
        # The pool CA (made on the first start) and the control plane's client certificate.
        self.ca = ca_store.load_or_create(sessions, config.data_dir / "pki", config.ca_passphrase_file)
        self._client_cert = self.ca.issue("control", CONTROL_PLANE_CN, [], client=True, server=False)
        self.enrolment = Enrolment(sessions, self.ca, self.hosts.local)
        self.agents = AgentRegistry(sessions, self.hosts.local, agent, remote=self._remote_agent)
        self.join_url: str | None = None  # where agents join, once the listener serves
        server_id = instance_id(config.data_dir)
        self.operations = OperationService(sessions, server_id)
        # This server's image store: this host's agent's (`up`), or the control plane's own;
        # the pool's set of images is in the database, the bytes it lacks come from its peers.
        self._peer_images = PeerImages(self.ca.cert_file, self._client_cert.cert, self._client_cert.key)
        self._image_store = images or self.agent
        self.images = ImageService(sessions, self._image_store, self.operations,
                                   server=server_id, peers=self._peer_images,
                                   url=lambda: self.join_url)
        self.vms = VMService(sessions, self.agents, images=self.images,
                             boot_timeout=config.boot_timeout, events=self.events, placer=self.placer,
                             networks=self.networks, secgroups=self.secgroups)
        self.secgroups.on_change = self.vms.converge_all_networks
        self.snapshots = SnapshotService(self.vms, self.events)
        self.backups = BackupService(self.vms, self.events)
        self.clones = CloneService(self.vms, self.events, warm_copies=lambda: self.settings.get().warm_copies)
        self.warm_vms = WarmVMs(sessions, self.vms, self.settings, self.events)
        self.vms.take_warm = self.warm_vms.take
        self.agent_events = EventPump(sessions, self.agents, self.vms.on_agent_event)
        self.vm_operations = VMOperations(sessions, self.vms, self.operations, self.events)
        self.idempotency = IdempotentCreates(
            sessions, self.vms.get, self.operations.get,
            lambda vm_id: self.vm_operations.follow_create(vm_id, actor="idempotent-retry"))
        self.balancer = MemoryBalancer(self.vms, self.agent, self.events, self.audit, config.memory)
        self.usage = UsageRecorder(sessions, self.vms, self.agents)
        self.summary = Summary(sessions)
        self.leases = LeaseService(sessions, self.events, self.audit, on_lost=self.vms.host_lost,
                                   on_back=self._host_back, on_state=self.placer.invalidate)
        self.hosts.leases = self.leases
        # The pool's background loops run on one server of those sharing the database.
        self.leader = Leadership(sessions, events=self.events)
        self.lease_monitor = Loop("lease-monitor", self.leases.expire, MONITOR_PERIOD_S, self.leader)
        # Every host's networks again now and then: a converge an agent missed heals.
        self.network_rounds = Loop("network-converge", self.vms.converge_all_networks,
                                   NETWORK_ROUND_S, self.leader)
        self.usage_sampler = Loop("usage-sampler", self.usage.sample, self.usage.interval_s, self.leader)
        self.warm_refill = Loop("warm-vms", self.warm_vms.refill, REFILL_PERIOD_S, self.leader)
        # Every server tends its own copies of the pool's images (not only the leader).
        self.image_sync = Loop("image-sync", self.images.sync, SYNC_PERIOD_S)
        self.heartbeat: LocalHeartbeat | None = None

    def _remote_agent(self, name: str, url: str) -> Agent:
        return RemoteAgent(name, url, ca=self.ca.cert_file, cert=self._client_cert.cert,
                           key=self._client_cert.key, revoked=self.enrolment.revoked)

    def listener_cert(self, host: str) -> Files:
        """The agent listener's server certificate, for the address it listens on."""
        names = sorted({host, "127.0.0.1", "localhost", socket.gethostname()} - {"0.0.0.0", "::", ""})
        return self.ca.issue("listener", f"{CONTROL_PLANE_CN}-listener", names, client=False, server=True)

    def api_cert(self, names: list[str]) -> Files:
        """The API's server certificate (HTTPS beyond loopback), for the names it answers to."""
        return self.ca.issue("api", "virtpool-api", names, client=False, server=True)

    def agent_joined(self, host: str) -> None:
        """An agent (re)started on ``host``: drive it afresh, follow its events, reconcile."""
        self.agents.forget(host)
        self.agent_events.follow(host)
        threading.Thread(target=self._reconcile_quietly, args=(host,), name=f"reconcile-{host}",
                         daemon=True).start()

    def _host_back(self, host: str) -> None:
        """A host renewed its lapsed lease: converge its VMs beside the heartbeat that said so
        (which must not wait for the host's agent, nor fail when converging does)."""
        threading.Thread(target=self._converge_back, args=(host,), name=f"back-{host}",
                         daemon=True).start()

    def _converge_back(self, host: str) -> None:
        for attempt in range(BACK_ATTEMPTS):
            try:
                self.vms.host_back(host)
                return
            except VirtpoolError as err:  # a link that is only half healed: try again shortly
                log.warning("converging host %s after it came back failed (attempt %d): %s",
                            host, attempt + 1, err)
                time.sleep(BACK_RETRY_S)

    def _reconcile_quietly(self, host: str) -> None:
        try:
            self.vms.reconcile(host)
            self.hosts.reconcile_usage(host)
        except VirtpoolError as err:
            log.warning("reconcile of host %s failed for now: %s", host, err)

    def delete_image(self, name: str) -> None:
        """Delete an image pool-wide (refused while a VM uses it), with the hosts' copies."""
        self.images.delete(name)
        self.vms.drop_image_copies(name)

    def remove_host(self, name: str) -> None:
        """Remove a host (holding no VM) and revoke its agent's certificate in one step: its
        agent is refused from its next request on."""
        self.hosts.remove(name, also=self.enrolment.revoke_host)
        self.enrolment.forget_cache()
        self.agents.forget(name)

    def start(self) -> bool:
        """Register this host, reconcile VMs and its usage counters with it, fail the
        operations its previous run left unfinished (only its own: others sharing the database
        carry on theirs); create the admin token on first start (True then). A
        control-plane-only server has no host: it fails its own unfinished operations and
        makes the token, nothing else."""
        if not self.config.control_only:
            self.hosts.register_local(self.agent.host_info(), self.config.vtep)
            cut_off = cut_off_creates(self.operations)
            # VMs another server marked unknown while this host was away get their state back
            # first, so that the reconcile below converges them with the rest.
            self.vms.restore_known(self.hosts.local)
            self.vms.reconcile()
            carried: set[str] = set()
            try:
                carried = settle_cut_off(cut_off, self.idempotency.settle(), self.vms,
                                         self.operations, self.vm_operations, self.idempotency)
            except Exception:  # tidying after a crash must never keep the platform from starting
                log.exception("could not settle the creates a crash cut off; they are failed as interrupted")
            self.operations.fail_interrupted(keep=carried)
            self.agent_events.follow(self.hosts.local)
            self.hosts.reconcile_usage()
            self.balancer.start()
            self.heartbeat = LocalHeartbeat(self.leases, self.hosts.local,
                                            agent_version=__version__)
            self.heartbeat.start()
        else:
            self.operations.fail_interrupted()
        self.leader.start()
        self.lease_monitor.start()
        self.network_rounds.start()
        self.usage_sampler.start()
        self.warm_refill.start()
        if not isinstance(self._image_store, NoAgent):  # a server with no store holds no copy
            self.images.sync()  # what this server's store holds is the pool's before it serves
            self.image_sync.start()
        return self.tokens.bootstrap(self.config.token_file)

    def scrape(self, project: str | None) -> Scrape:
        """/metrics as ``project`` sees it (None: the whole pool, and the control plane's own)."""
        collectors: list[PoolCollector | CollectorRegistry] = [
            PoolCollector(self.summary, self.hosts, self.usage, project)]
        if project is None:
            collectors.append(self.metrics.registry)
        return Scrape(*collectors)

    def close(self) -> None:
        self.image_sync.stop()
        self._peer_images.close()
        self.warm_refill.stop()
        self.network_rounds.stop()
        self.lease_monitor.stop()
        self.leader.stop()
        if self.heartbeat is not None:
            self.heartbeat.stop()
        self.balancer.stop()
        self.agent_events.close()
        self.usage_sampler.stop()
        self.usage.close()
        self.vms.close()
        self.agents.close()
        self.engine.dispose()
