"""This VM's identity from the instance metadata service (IMDSv2 token when offered).

Outscale answers plain GETs; AWS may insist on a session token (``PUT /latest/api/token``).
Config overrides (``cloud.instance-id``, ``cloud.availability-zone``, ``cloud.region``) win.
"""

from __future__ import annotations

import urllib.error
import urllib.request

from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from bsud.cloud.base import Identity
from bsud.config import CloudSettings
from bsud.errors import CloudError

_TOKEN_TTL = "21600"


class MetadataClient:
    def __init__(self, base_url: str = "http://169.254.169.254", timeout: float = 2.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._token: str | None = None
        self._token_tried = False

    def _fetch_token(self) -> None:
        self._token_tried = True
        req = urllib.request.Request(
            f"{self.base_url}/latest/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": _TOKEN_TTL},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 - fixed http URL
                self._token = resp.read().decode().strip() or None
        except (urllib.error.URLError, OSError):
            self._token = None  # IMDSv1-only service (Outscale): plain GETs will do

    @retry(
        retry=retry_if_exception_type(OSError),
        stop=stop_after_attempt(3),
        wait=wait_exponential(multiplier=0.5, max=4),
        reraise=True,
    )
    def _get(self, path: str) -> str:
        if not self._token_tried:
            self._fetch_token()
        headers = {"X-aws-ec2-metadata-token": self._token} if self._token else {}
        req = urllib.request.Request(f"{self.base_url}/latest/meta-data/{path}", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                return resp.read().decode().strip()
        except urllib.error.HTTPError as exc:
            if exc.code == 401 and self._token_tried:
                self._token_tried = False  # token expired: take a new one next try
            raise

    def get(self, path: str) -> str:
        try:
            return self._get(path)
        except (urllib.error.URLError, OSError) as exc:
            raise CloudError(
                "metadata",
                f"cannot read {self.base_url}/latest/meta-data/{path}: {exc}; "
                "outside a cloud VM set cloud.instance-id and cloud.availability-zone in the config",
                temporary=True,
            ) from None


def resolve_identity(settings: CloudSettings, client: MetadataClient | None = None) -> Identity:
    """Identity from config overrides, the rest from the metadata service."""
    instance_id = settings.instance_id
    zone = settings.availability_zone
    if instance_id is None or zone is None:
        client = client or MetadataClient(settings.metadata_url)
        instance_id = instance_id or client.get("instance-id")
        zone = zone or client.get("placement/availability-zone")
    region = settings.region or zone[:-1]
    return Identity(instance_id=instance_id, availability_zone=zone, region=region)
