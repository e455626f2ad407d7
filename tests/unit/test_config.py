"""Config loading: original bsud files accepted as they are, every bad input one clear line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from bsud.config import (
    DiskType,
    EnvSettings,
    InvalidConfig,
    Layout,
    Provider,
    Target,
    check_drive_name,
    check_mount_path,
    load_config,
    parse_config,
    provisioned_iops,
    volume_limits,
)

NO_ENV = EnvSettings(osc_access_key=None, osc_secret_key=None, bsud_log=None)

ORIGINAL = {
    "authentication": {"access-key": "AKIAORIGINAL", "secret-key": "s3cr3t-value"},
    "drives": [
        {
            "name": "example",
            "target": "online",
            "mount-path": "/mnt",
            "disk-type": "gp2",
            "initial-size-gib": 10,
            "max-bsu-count": 10,
            "max-used-space-perc": 85,
            "min-used-space-perc": 40,
            "disk-scale-factor-perc": 20,
        }
    ],
}


def drive(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "data", "target": "online", "mount-path": "/mnt/data"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def parse(doc: dict[str, Any], env: EnvSettings = NO_ENV):
    return parse_config(json.dumps(doc), "bsud.json", env)


def problems(doc: dict[str, Any] | str) -> list[str]:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    with pytest.raises(InvalidConfig) as info:
        parse_config(text, "bsud.json", NO_ENV)
    return [str(p) for p in info.value.problems]


def test_original_config_is_accepted_unchanged():
    config = parse(ORIGINAL)
    (d,) = config.drives
    assert (d.name, d.target, d.mount_path, d.disk_type) == ("example", Target.ONLINE, "/mnt", DiskType.GP2)
    assert d.layout == Layout.LVM
    assert config.cloud.provider == Provider.OUTSCALE
    assert config.access_key == "AKIAORIGINAL"
    assert config.credentials_from == "config file"


def test_defaults_are_the_originals():
    d = parse({"drives": [drive()]}).drives[0]
    assert (d.disk_type, d.initial_size_gib, d.max_bsu_count) == (DiskType.GP2, 10, 10)
    assert (d.max_used_space_perc, d.min_used_space_perc, d.disk_scale_factor_perc) == (85, 40, 20)
    assert d.max_total_size_gib is None and d.disk_iops_per_gib is None


def test_credentials_from_environment_when_no_authentication_section():
    env = EnvSettings(osc_access_key="AKENV", osc_secret_key="envsecret")
    config = parse({"drives": [drive()]}, env)
    assert config.access_key == "AKENV"
    assert config.secret_key.get_secret_value() == "envsecret"
    assert config.credentials_from == "OSC_ACCESS_KEY/OSC_SECRET_KEY"


def test_credentials_fall_back_to_boto3_chain():
    config = parse({"cloud": {"provider": "aws", "region": "eu-west-1"}, "drives": [drive()]})
    assert config.access_key is None and config.credentials_from == "boto3 default chain"


def test_effective_config_masks_secrets():
    shown = json.dumps(parse(ORIGINAL).effective())
    assert "s3cr3t-value" not in shown
    assert "AKIAORIGINAL" not in shown
    assert '"secret-key": "********"' in shown


BAD = [
    ("unknown-key-suggests", {"drives": [drive(**{"max-used-space-pct": 80})]},
     "drive 'data': field 'max-used-space-pct': unknown key; did you mean 'max-used-space-perc'?"),
    ("unknown-top-key", {"drives": [drive()], "clouds": {}}, "field 'clouds': unknown key; did you mean 'cloud'?"),
    ("unknown-cloud-key", {"cloud": {"provder": "aws"}, "drives": [drive()]},
     "field 'cloud.provder': unknown key; did you mean 'provider'?"),
    ("missing-target", {"drives": [drive(target=None)]}, "drive 'data': field 'target': required key is missing"),
    ("missing-drives", {}, "field 'drives': required key is missing"),
    ("string-number", {"drives": [drive(**{"max-bsu-count": "10"})]},
     "field 'max-bsu-count': must be a whole number (got '10')"),
    ("float-number", {"drives": [drive(**{"initial-size-gib": 1.5})]}, "field 'initial-size-gib': must be a whole"),
    ("bad-target", {"drives": [drive(target="up")]}, "field 'target': must be one of"),
    ("bad-layout", {"drives": [drive(layout="zfs")]}, "field 'layout': must be one of"),
    ("shell-name", {"drives": [drive(name="a;rm -rf /")]}, "field 'name': 'a;rm -rf /' is not a usable drive name"),
    ("path-name", {"drives": [drive(name="../etc")]}, "is not a usable drive name"),
    ("empty-name", {"drives": [drive(name="")]}, "is not a usable drive name"),
    ("reserved-name", {"drives": [drive(name="mapper")]}, "is reserved"),
    ("min-ge-max", {"drives": [drive(**{"min-used-space-perc": 90})]},
     "field 'min-used-space-perc': need 0 < min-used-space-perc (90) < max-used-space-perc (85) <= 100"),
    ("min-zero", {"drives": [drive(**{"min-used-space-perc": 0})]}, "need 0 < min-used-space-perc (0)"),
    ("max-over-100", {"drives": [drive(**{"max-used-space-perc": 101})]}, "field 'max-used-space-perc'"),
    ("relative-path", {"drives": [drive(**{"mount-path": "mnt/data"})]}, "must be an absolute path"),
    ("root-path", {"drives": [drive(**{"mount-path": "/"})]}, "must not be '/'"),
    ("system-dir", {"drives": [drive(**{"mount-path": "/usr/lib/x"})]}, "is a system directory"),
    ("etc", {"drives": [drive(**{"mount-path": "/etc"})]}, "is a system directory"),
    ("dotdot", {"drives": [drive(**{"mount-path": "/mnt/../etc"})]}, "must not contain '.' or '..'"),
    ("duplicate-name", {"drives": [drive(), drive(**{"mount-path": "/mnt/other"})]}, "duplicate drive name"),
    ("duplicate-path", {"drives": [drive(), drive(name="other")]}, "is also the mount path of drive 'data'"),
    ("nested-path", {"drives": [drive(), drive(name="other", **{"mount-path": "/mnt/data/sub"})]}, "are nested"),
    ("too-big", {"drives": [drive(**{"initial-size-gib": 20000})]}, "must be between 1 and 14901 GiB"),
    ("count-too-high", {"drives": [drive(**{"max-bsu-count": 40})]}, "field 'max-bsu-count': must be between 1 and 39"),
    ("count-zero", {"drives": [drive(**{"max-bsu-count": 0})]}, "must be between 1 and 39"),
    ("total-below-initial", {"drives": [drive(**{"max-total-size-gib": 5})]}, "must be at least initial-size-gib"),
    ("io1-no-iops", {"drives": [drive(**{"disk-type": "io1"})]}, "field 'disk-iops-per-gib': is required"),
    ("io1-too-many-iops", {"drives": [drive(**{"disk-type": "io1", "disk-iops-per-gib": 301})]},
     "must be between 1 and 300"),
    ("gp3-on-outscale", {"drives": [drive(**{"disk-type": "gp3"})]}, "is not offered by provider 'outscale'"),
    ("scale-factor", {"drives": [drive(**{"disk-scale-factor-perc": 0})]}, "field 'disk-scale-factor-perc'"),
    ("ec2-needs-endpoint", {"cloud": {"provider": "ec2"}, "drives": [drive()]}, "field 'cloud.endpoint'"),
    ("bad-region", {"cloud": {"region": "mars-1"}, "drives": [drive()]}, "unknown Outscale region 'mars-1'"),
    ("not-object", [1, 2], "must hold a JSON object"),
    ("drives-not-list", {"drives": {}}, "field 'drives': must be a list"),
    ("tag-aws-reserved", {"drives": [drive(tags={"aws:createdBy": "me"})]},
     "drive 'data': field 'tags': tag 'aws:createdBy': keys starting with osc.bsud. or aws: are bsud's own"),
    ("tag-bsud-own", {"cloud": {"tags": {"osc.bsud.drive-name": "x"}}, "drives": [drive()]},
     "field 'cloud.tags': tag 'osc.bsud.drive-name'"),
    ("tag-too-long", {"drives": [drive(tags={"k" * 128: "v"})]}, "keys are 1 to 127 characters"),
    ("tags-too-many", {"drives": [drive(tags={f"k{n}": "v" for n in range(49)})]}, "49 tags: a volume holds 50"),
    ("tag-not-string", {"drives": [drive(tags={"team": 7})]}, "field 'tags.team'"),
    ("encrypted-on-outscale", {"drives": [drive(encrypted=True)]},
     "field 'encrypted': provider 'outscale' cannot encrypt volumes at creation (Outscale FCU has no such option)"),
    ("encrypted-default-on-outscale", {"cloud": {"encrypted": True}, "drives": [drive()]}, "field 'cloud.encrypted'"),
    ("kms-without-encrypted", {"cloud": {"provider": "aws"}, "drives": [drive(**{"kms-key-id": "alias/x"})]},
     "field 'kms-key-id': needs \"encrypted\": true"),
    ("iops-on-gp2", {"cloud": {"provider": "aws"}, "drives": [drive(**{"disk-iops": 4000})]},
     "field 'disk-iops': is not offered with disk-type gp2"),
    ("gp3-iops-range", {"cloud": {"provider": "aws"}, "drives": [drive(**{"disk-type": "gp3", "disk-iops": 2000})]},
     "field 'disk-iops': must be between 3000 and 5000 for gp3 volumes of 10 GiB or more (got 2000)"),
    ("gp3-iops-per-gib", {"cloud": {"provider": "aws"},
                          "drives": [drive(**{"disk-type": "gp3", "disk-iops": 6000, "initial-size-gib": 10})]},
     "must be between 3000 and 5000"),
    ("gp3-throughput", {"cloud": {"provider": "aws"},
                        "drives": [drive(**{"disk-type": "gp3", "disk-throughput": 1000})]},
     "field 'disk-throughput': must be between 125 and 750 MiB/s with 3000 IOPS (got 1000)"),
    ("throughput-on-io1", {"cloud": {"provider": "aws"},
                           "drives": [drive(**{"disk-type": "io1", "disk-iops": 400, "disk-throughput": 200})]},
     "field 'disk-throughput': is not offered with disk-type io1"),
    ("io1-iops-both", {"drives": [drive(**{"disk-type": "io1", "disk-iops": 400, "disk-iops-per-gib": 30})]},
     "field 'disk-iops': give disk-iops (a fixed figure) or disk-iops-per-gib, not both"),
    ("metrics-listen-no-port", {"daemon": {"metrics-listen": "9711"}, "drives": [drive()]},
     "field 'daemon.metrics-listen': '9711' is not host:port"),
    ("metrics-listen-port-range", {"daemon": {"metrics-listen": "127.0.0.1:70000"}, "drives": [drive()]},
     "port 1 to 65535"),
    ("metrics-textfile-suffix", {"daemon": {"metrics-textfile": "/var/lib/bsud.txt"}, "drives": [drive()]},
     "field 'daemon.metrics-textfile': '/var/lib/bsud.txt' must be an absolute path ending in .prom"),
    ("on-event-relative", {"daemon": {"on-event": ["notify.sh"]}, "drives": [drive()]},
     "field 'daemon.on-event': 'notify.sh': give the program's absolute path"),
    ("on-event-string", {"daemon": {"on-event": "/bin/notify --all"}, "drives": [drive()]},
     "field 'daemon.on-event'"),
]


@pytest.mark.parametrize(("doc", "expected"), [(d, e) for _, d, e in BAD], ids=[i for i, _, _ in BAD])
def test_bad_config_gives_one_line_naming_file_and_field(doc, expected):
    found = problems(doc)
    assert found, "expected at least one problem"
    assert any(expected in p for p in found), found
    for line in found:
        assert "\n" not in line
        assert line.startswith("bsud.json")


@pytest.mark.parametrize("listen", ["127.0.0.1:9711", "[::1]:9711", ":9711", "metrics.local:80"])
def test_metrics_listen_accepts_host_port(listen):
    assert parse({"daemon": {"metrics-listen": listen}, "drives": [drive()]}).daemon.metrics_listen == listen


def test_volume_options_from_the_cloud_section_are_each_drives_default():
    config = parse({"cloud": {"provider": "aws", "region": "eu-west-1", "tags": {"team": "db", "env": "prod"},
                              "encrypted": True, "kms-key-id": "alias/bsud"},
                    "drives": [drive(tags={"env": "staging"}, **{"disk-type": "gp3", "disk-iops": 6000,
                                                                 "disk-throughput": 500, "initial-size-gib": 12}),
                               drive(name="plain", **{"mount-path": "/mnt/plain", "encrypted": False})]})
    data, plain = config.drives
    assert data.tags == {"team": "db", "env": "staging"} and data.encrypted and data.kms_key_id == "alias/bsud"
    assert (data.disk_iops, data.disk_throughput) == (6000, 500)
    assert plain.tags == {"team": "db", "env": "prod"} and plain.encrypted is False and plain.kms_key_id is None


def test_invalid_json_names_line_and_column():
    (line,) = problems('{"drives": [\n  {"name": }\n]}')
    assert line.startswith("bsud.json: line 2 column")


def test_several_problems_are_all_reported():
    found = problems({"drives": [drive(target="up", **{"max-bsu-count": "x"})]})
    assert len(found) == 2


def test_iops_per_gib_ignored_with_gp2_is_a_warning_not_an_error():
    config = parse({"drives": [drive(**{"disk-iops-per-gib": 30})]})
    assert any("disk-iops-per-gib is ignored" in w for w in config.warnings)


def test_thresholds_whose_classic_grow_is_shrunk_back_at_once_are_a_warning():
    # issue 21's drive (30/75/100): a grow lands at 25 %, under min; the new volume alone holds the data at 37.5 %,
    # under the middle: the right size moves the first volume's data onto it after every grow
    config = parse({"drives": [drive(**{"min-used-space-perc": 30, "max-used-space-perc": 75,
                                        "disk-scale-factor-perc": 100})]})
    (warning,) = [w for w in config.warnings if "lands at" in w]
    assert "lands at 25.0% used, under min-used-space-perc (30)" in warning
    assert "lower min-used-space-perc or the factor" in warning
    # the defaults (40/85/20) land at 38.6 % but the new volume alone would be at 70.8 %, over the middle: no warning
    assert not [w for w in parse({"drives": [drive()]}).warnings if "lands at" in w]
    assert not [w for w in parse({"drives": [drive(**{"disk-scale-factor-perc": 35})]}).warnings if "lands at" in w]
    assert [w for w in parse({"drives": [drive(**{"disk-scale-factor-perc": 40})]}).warnings if "lands at" in w]


@pytest.mark.parametrize(
    ("size", "per_gib", "expected"),
    [
        (10, 30, 300),        # plain product
        (1, 30, 100),         # floor 100
        (100, 300, 13000),    # 30000 capped at 13000 (the original asked max() → always >= 13000)
        (20, 500, 6000),      # capped at 300 per GiB
        (50, 200, 10000),
    ],
)
def test_outscale_io1_iops(size, per_gib, expected):
    limits = volume_limits(Provider.OUTSCALE, DiskType.IO1)
    assert provisioned_iops(size, per_gib, limits) == expected


# issue 9 #8: valid original bsud names that only look like device prefixes
@pytest.mark.parametrize("name", ["data", "my-drive", "Drive_2", "a", "x.y+z", "a" * 63, "sdata", "mdata", "vdata",
                                  "md-cache", "vdisk", "ttyrec", "loopy", "nvmedata", "dm-cache", "sdcard-backup"])
def test_good_drive_names(name):
    assert check_drive_name(name) is None


@pytest.mark.parametrize("name", ["-data", "a b", "a/b", "$(id)", "dm-0", "loop0", "a" * 64, "ü", "disk", "sda",
                                  "xvdba", "vdb1", "nvme0n1", "nvme1n1p2", "md127", "tty", "ttyS0", "hdc",
                                  "snapshot", "pvmove", "mapper", "sr0"])
def test_bad_drive_names(name):
    assert check_drive_name(name) is not None


@pytest.mark.parametrize("path", ["/mnt", "/mnt/data", "/data", "/srv/bsud", "/var/lib/docker", "/home/me/d"])
def test_good_mount_paths(path):
    assert check_mount_path(path) is None


@pytest.mark.parametrize("path", ["", "data", "/", "/proc", "/sys/x", "/dev/foo", "/usr", "/var", "/home",
                                  "/a b", "/a/./b", "/boot/efi"])
def test_bad_mount_paths(path):
    assert check_mount_path(path) is not None


def test_load_config_reports_missing_file(tmp_path):
    with pytest.raises(InvalidConfig) as info:
        load_config(tmp_path / "nope.json", NO_ENV)
    assert "file not found" in str(info.value) and "nope.json" in str(info.value)


def test_readable_secret_file_warns(tmp_path):
    path = tmp_path / "bsud.json"
    path.write_text(json.dumps(ORIGINAL))
    os.chmod(path, 0o644)
    assert any("chmod 600" in w for w in load_config(path, NO_ENV).warnings)
    os.chmod(path, 0o600)
    assert not any("chmod 600" in w for w in load_config(path, NO_ENV).warnings)


def test_example_config_is_valid():
    example = Path(__file__).resolve().parents[2] / "config.example.json"
    config = load_config(example, NO_ENV)
    assert config.drives


# --- issue 20: no config mistake deletes data; every problem in one run; nothing a user writes ends in a traceback


def test_a_repeated_key_is_refused_with_its_line_not_silently_the_last():
    text = '{"drives": [{"name": "data", "target": "online",\n  "mount-path": "/mnt/data",\n  "target": "delete"}]}'
    assert problems(text) == ["bsud.json: line 3: drive 'data': field 'target': repeated key (first on line 1): "
                              "JSON keeps the last one silently and bsud will not guess which you meant; remove one "
                              "of them"]


def test_a_repeated_section_is_refused():
    text = ('{"drives": [{"name": "a", "target": "online", "mount-path": "/mnt/a"}],\n'
            ' "drives": [{"name": "b", "target": "online", "mount-path": "/mnt/b"}]}')
    assert problems(text) == ["bsud.json: line 2: field 'drives': repeated key (first on line 1): JSON keeps the "
                              "last one silently and bsud will not guess which you meant; remove one of them"]


def test_repeated_keys_deep_down_name_their_export():
    doc = ('{"drives": [{"name": "data", "target": "online", "mount-path": "/mnt/data", "exports": [\n'
           '  {"kind": "nfs", "clients": ["10.0.0.0/8"], "clients": ["*"]}]}]}')
    (line,) = problems(doc)
    assert line.startswith("bsud.json: line 2: drive 'data': field 'exports #1 (nfs).clients': repeated key")


def test_an_absurd_number_is_one_line_not_a_traceback():
    text = '{"drives": [{"name": "data", "target": "online", "mount-path": "/mnt/data", "max-bsu-count": ' + \
        "9" * 5000 + "}]}"
    assert problems(text) == ["bsud.json: line 1: drive 'data': field 'max-bsu-count': a 5000-character number is "
                              "not a usable value (no field takes a number of 10^15 or more)"]
    assert problems(json.dumps({"drives": [drive(**{"max-total-size-gib": 1e300})]})) == [
        "bsud.json: line 1: drive 'data': field 'max-total-size-gib': 1e+300 is not a usable value (no field takes "
        "a number of 10^15 or more)"]


def test_type_and_rule_problems_are_reported_in_one_run():
    found = problems({"drives": [drive(**{"mount-path": "mnt/data", "initial-size-gib": 2.5,
                                          "max-total-size-gib": 5}),
                                 drive(name="logs", target="sideways", **{"mount-path": "/mnt/logs"}),
                                 drive(name="sda", **{"mount-path": "/mnt/sda"})],
                      "daemon": {"metrics-textfile": "relative.prom"}})
    assert found == [
        "bsud.json: drive 'data': field 'initial-size-gib': must be a whole number (got 2.5)",
        "bsud.json: drive 'logs': field 'target': must be one of 'online', 'offline' or 'delete' (got 'sideways')",
        "bsud.json: field 'daemon.metrics-textfile': 'relative.prom' must be an absolute path ending in .prom (what "
        "node_exporter's textfile collector reads)",
        "bsud.json: drive 'data': field 'mount-path': 'mnt/data' must be an absolute path (starting with /)",
        "bsud.json: drive 'sda': field 'name': 'sda' is reserved (it would clash with a name under /dev or in LVM); "
        "choose another name",
    ]  # not "max-total-size-gib (5) must be at least initial-size-gib (10)": 10 is only the refused value's default


def test_a_drive_missing_a_required_key_does_not_hide_the_others_problems():
    found = problems({"drives": [drive(target=None), drive(name="two", **{"mount-path": "/"})]})
    assert found == ["bsud.json: drive 'data': field 'target': required key is missing",
                     "bsud.json: drive 'two': field 'mount-path': the mount path must not be '/'"]


def test_the_original_docs_spelling_of_authentication_is_read_with_a_warning():
    doc = {"authentification": {"access-key": "AKIAORIG", "secret-key": "s3cr3t-value"}, "drives": [drive()]}
    config = parse(doc)
    assert config.access_key == "AKIAORIG" and config.credentials_from == "config file"
    assert config.warnings == ("bsud.json: 'authentification' read as 'authentication' (the original bsud's docs "
                               "spell it so, its code did not read it); rename the key",)
    both = {**doc, "authentication": {"access-key": "AKIAOTHER", "secret-key": "x" * 8}}
    assert problems(both) == ["bsud.json: line 1: field 'authentification': give 'authentication' only "
                              "('authentification' is also there)"]


@pytest.mark.parametrize("text", ["", "[", "{", '{"drives": [', "[" * 100000, "{" * 5000, '{"a": NaN}',
                                  '{"a": Infinity}', "\ufeff{}", '{"drives": []} trailing', '"just a string"',
                                  '{"drives": "x"}', '{"drives": [1, null, true]}', '{"a":"\\ud800"}',
                                  '{"drives": [{"name": {"name": {}}}]}', '{"\\u0000": 1}', "1e99999999"])
def test_nothing_a_user_can_write_ends_in_a_traceback(text: str):
    found = problems(text)
    assert found and all(p.startswith("bsud.json") and "\n" not in p for p in found), found


def test_random_damage_to_a_good_file_is_always_one_line_per_problem():
    import random

    good = json.dumps({"cloud": {"provider": "aws", "region": "eu-west-1", "tags": {"a": "b"}},
                       "daemon": {"metrics-listen": "127.0.0.1:9711", "on-event": ["/bin/true"]},
                       "drives": [drive(exports=[{"kind": "nfs", "clients": ["10.0.0.0/8"]}],
                                        **{"max-total-size-gib": 100})]})
    rng = random.Random(20)
    alphabet = '{}[]:,"0123456789.eE-+ \\/atrufnl' + "x\u00e9\u2028"
    for _ in range(3000):
        chars = list(good)
        for _ in range(rng.randint(1, 4)):
            where = rng.randrange(len(chars))
            match rng.randrange(3):
                case 0:
                    del chars[where]
                case 1:
                    chars.insert(where, rng.choice(alphabet))
                case _:
                    chars[where] = rng.choice(alphabet)
        text = "".join(chars)
        try:
            parse_config(text, "bsud.json", NO_ENV)
        except InvalidConfig as exc:
            assert exc.problems and all("\n" not in str(p) for p in exc.problems), text
