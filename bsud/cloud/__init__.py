"""Cloud volumes: one interface (:class:`CloudProvider`), an EC2-API and a local implementation.

A provider is one module here with a ``CloudProvider`` subclass that has ``from_config`` and its ``tools``, one line
in :data:`PROVIDERS`, the value in ``config.Provider`` and its limits in ``config.catalogue``. Modules are imported
when chosen (boto3 only for the EC2 API).
"""

from __future__ import annotations

import importlib

from bsud.cloud.base import CloudProvider, Identity, Volume, volumes_by_drive
from bsud.config import Config, Provider

__all__ = ["PROVIDERS", "CloudProvider", "Identity", "Volume", "make_provider", "volumes_by_drive"]

#: The config's ``cloud.provider`` → ``module:class``.
PROVIDERS: dict[Provider, str] = {
    Provider.OUTSCALE: "bsud.cloud.ec2:Ec2Cloud",
    Provider.AWS: "bsud.cloud.ec2:Ec2Cloud",
    Provider.EC2: "bsud.cloud.ec2:Ec2Cloud",
    Provider.LOCAL: "bsud.cloud.local:LocalCloud",
}


def make_provider(config: Config) -> CloudProvider:
    """The provider the config asks for."""
    module, _, name = PROVIDERS[config.cloud.provider].partition(":")
    cls: type[CloudProvider] = getattr(importlib.import_module(module), name)
    return cls.from_config(config)
