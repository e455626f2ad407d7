"""Cloud volumes: one interface (:class:`CloudProvider`), an EC2-API and a local implementation."""

from __future__ import annotations

from bsud.cloud.base import CloudProvider, Identity, Volume, volumes_by_drive
from bsud.config import Config, Provider

__all__ = ["CloudProvider", "Identity", "Volume", "make_provider", "volumes_by_drive"]


def make_provider(config: Config) -> CloudProvider:
    """The provider the config asks for (imports boto3 only when needed)."""
    if config.cloud.provider == Provider.LOCAL:
        from bsud.cloud.local import LocalCloud

        return LocalCloud(config.cloud)
    from bsud.cloud.ec2 import Ec2Cloud

    secret = config.secret_key.get_secret_value() if config.secret_key else None
    return Ec2Cloud(config.cloud, config.access_key, secret)
