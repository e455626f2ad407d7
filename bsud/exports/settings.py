"""The NFS servers' own settings (the config's ``nfs`` section): below the kinds and the managed nfs-ganesha, which
both read them."""

from __future__ import annotations

from pydantic import Field

from bsud.exports.model import Settings


class GaneshaSettings(Settings):
    """nfs-ganesha, the NFS server of the exports with ``"server": "ganesha"``: the system's service, or one process
    bsud runs and keeps running itself (``managed``); administered over D-Bus either way."""

    #: Where bsud writes each drive's EXPORT blocks (``<drive>.conf``), which it hands to ganesha over D-Bus.
    exports_dir: str = "/etc/ganesha/bsud.d"
    #: No heartbeat signal from ganesha for this long: not ready (said in the status); a managed one is restarted.
    heartbeat_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    #: bsud runs ``ganesha.nfsd -F`` itself (once the system D-Bus and rpcbind run), restarts it with backoff when it
    #: exits or stops sending heartbeats, and stops it when bsud stops. False: the system's nfs-ganesha service.
    managed: bool = False
    #: The managed process's main configuration (NFS_CORE_PARAM, NFSV4, LOG…: the operator's; exports come over D-Bus).
    config_file: str = "/etc/ganesha/ganesha.conf"
    #: The managed process's log (``-L``) and pid file (``-p``).
    log_file: str = "/var/log/ganesha/ganesha.log"
    pid_file: str = "/run/ganesha/ganesha.pid"
    #: The longest wait between two restarts of a managed process that keeps failing (1, 2, 4… seconds up to this).
    restart_backoff_max_seconds: float = Field(default=60.0, ge=1, le=3600)


class NfsSettings(Settings):
    ganesha: GaneshaSettings = GaneshaSettings()
