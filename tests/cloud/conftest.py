"""Cloud lane: the EC2 provider against moto's HTTP server on loopback.

Server mode (rather than in-process mocking) so that a fault injected with a botocore
``before-send`` hook replaces the HTTP exchange instead of running beside it: in-process,
moto would still carry out a request whose answer the hook replaced.
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections.abc import Iterator

import boto3
import pytest
from moto.server import ThreadedMotoServer

from bsud.cloud.base import Identity
from bsud.cloud.ec2 import Ec2Cloud
from bsud.config import CloudSettings

from .faultproxy import FaultProxy

REGION = "us-east-1"
ZONE = "us-east-1a"


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    for key in ("AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)


@pytest.fixture
def ec2(moto_endpoint: str, aws_env: None):
    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST"), timeout=10)
    return boto3.client("ec2", region_name=REGION, endpoint_url=moto_endpoint)


@pytest.fixture
def proxy(moto_endpoint: str, aws_env: None) -> Iterator[FaultProxy]:
    """moto's server, reset, behind a proxy that counts the calls and injects faults (tests/cloud/faultproxy.py)."""
    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST"), timeout=10)
    fault = FaultProxy(moto_endpoint)
    yield fault
    fault.close()


def run_instance(ec2) -> str:
    image = ec2.describe_images()["Images"][0]["ImageId"]
    reservation = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1,
                                    Placement={"AvailabilityZone": ZONE})
    return reservation["Instances"][0]["InstanceId"]


@pytest.fixture
def instance_id(ec2) -> str:
    return run_instance(ec2)


@pytest.fixture
def make_cloud(moto_endpoint: str, aws_env: None):
    def make(instance_id: str, **settings) -> Ec2Cloud:
        cfg = CloudSettings(**{"provider": "ec2", "endpoint": moto_endpoint, "region": REGION,
                               "instance_id": instance_id, "availability_zone": ZONE, "api_calls_per_second": 1000.0,
                               **settings})
        cloud = Ec2Cloud(cfg, "testing", "testing", identity=Identity(instance_id, ZONE, REGION))
        cloud.poll_interval = 0.01
        return cloud

    return make


@pytest.fixture
def cloud(make_cloud, instance_id: str) -> Ec2Cloud:
    return make_cloud(instance_id)


@pytest.fixture
def narrow_cloud(make_cloud, instance_id: str, moto_endpoint: str):
    """``narrow_cloud(actions)``: a provider whose credentials are an IAM user of moto allowed only ``actions``,
    and a context in which moto enforces IAM (it does not by default)."""
    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=moto_endpoint)

    def auth(count: str) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset-auth", data=count.encode(),
                                                      headers={"Content-Type": "text/plain"}, method="POST"),
                               timeout=10)

    @contextlib.contextmanager
    def enforced() -> Iterator[None]:
        auth("0")
        try:
            yield
        finally:
            auth("inf")

    def make(name: str, actions: list[str]):
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Resource": "*", "Action": actions}]}
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="bsud", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        cloud = make_cloud(instance_id)
        return type(cloud)(cloud.settings, key["AccessKeyId"], key["SecretAccessKey"], identity=cloud.identity())

    make.enforced = enforced  # type: ignore[attr-defined]
    return make
