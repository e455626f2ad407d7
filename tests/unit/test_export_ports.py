"""When a port is busy for an export (iSCSI, NVMe/TCP), and when an export's own listener is up, from /proc/net/tcp
and tcp6 as recorded (tests/data/proc_net/README lists what listens there): an address and a port, never the port
alone."""

from __future__ import annotations

import ipaddress
import shutil
import sys
from pathlib import Path

import pytest

from bsud.exports.files import Listener, endpoint, listeners, parse_listeners, port_busy, port_listening

PROC = Path(__file__).parent.parent / "data" / "proc_net"

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="recorded on a little-endian machine")


def busy(address: str, port: int) -> list[str]:
    return [str(listener) for listener in port_busy(address, port, PROC)]


def test_every_listener_is_read_with_its_address_and_nothing_else():
    found = {str(listener) for listener in listeners(PROC)}
    assert found == {"127.0.0.2:4423", "0.0.0.0:3260", "127.0.0.1:4420", "10.0.0.5:4424", "[::]:2049", "[::1]:4425",
                     "127.0.0.1:4426", "[fd00::5]:4427"}  # the IPv4-mapped [::ffff:127.0.0.1] read as 127.0.0.1


def test_the_same_port_at_another_address_is_not_busy():
    assert busy("127.0.0.1", 4423) == []  # the defect: 127.0.0.2:4423 made 127.0.0.1:4423 "in use"
    assert busy("127.0.0.2", 4423) == ["127.0.0.2:4423"]
    assert busy("10.0.0.6", 4424) == [] and busy("10.0.0.5", 4424) == ["10.0.0.5:4424"]
    assert not port_listening("127.0.0.1", 4423, PROC)  # nor is it the export's own listener
    assert port_listening("127.0.0.2", 4423, PROC)


def test_a_wildcard_listener_makes_its_port_busy_on_every_address_it_covers():
    assert busy("127.0.0.1", 3260) == busy("10.9.8.7", 3260) == ["0.0.0.0:3260"]
    assert busy("127.0.0.1", 2049) == busy("::1", 2049) == busy("0.0.0.0", 2049) == ["[::]:2049"]
    assert busy("fd00::9", 3260) == []  # 0.0.0.0 listens on IPv4 only: an IPv6 address is free
    assert not port_listening("127.0.0.1", 3260, PROC)  # a wildcard listener is not the export's own
    assert port_listening("0.0.0.0", 3260, PROC)


def test_a_wildcard_export_is_blocked_by_any_listener_on_its_port():
    assert busy("0.0.0.0", 4423) == ["127.0.0.2:4423"]
    assert busy("0.0.0.0", 4424) == ["10.0.0.5:4424"]
    assert busy("::", 4424) == ["10.0.0.5:4424"]  # [::] listens on IPv4 too
    assert busy("::", 4427) == ["[fd00::5]:4427"]
    assert busy("0.0.0.0", 4427) == []  # a specific IPv6 listener does not keep IPv4's wildcard from binding
    assert busy("0.0.0.0", 4429) == []


def test_ipv6_and_ipv4_mapped_addresses():
    assert busy("::1", 4425) == ["[::1]:4425"] and busy("::2", 4425) == [] and busy("127.0.0.1", 4425) == []
    assert busy("fd00::5", 4427) == ["[fd00::5]:4427"] and busy("fd00::6", 4427) == []
    assert port_listening("fd00:0:0::5", 4427, PROC)  # the same address however it is written
    # A socket on ::ffff:127.0.0.1 is on 127.0.0.1, written either way.
    assert busy("127.0.0.1", 4426) == busy("::ffff:127.0.0.1", 4426) == ["127.0.0.1:4426"]
    assert port_listening("127.0.0.1", 4426, PROC) and port_listening("::ffff:127.0.0.1", 4426, PROC)
    assert endpoint("::1", 4420) == "[::1]:4420" and endpoint("10.0.0.5", 4420) == "10.0.0.5:4420"


def test_connections_are_no_listeners():
    assert busy("127.0.0.1", 8080) == [] and busy("0.0.0.0", 8080) == []  # ESTABLISHED
    assert busy("127.0.0.1", 4422) == [] and busy("0.0.0.0", 4422) == []  # TIME_WAIT
    assert busy("::1", 4428) == []
    assert not port_listening("127.0.0.1", 8080, PROC) and not port_listening("::1", 4428, PROC)


def test_the_words_of_each_file_are_read_in_the_machines_byte_order():
    line = "   0: 0100007F:0CBC 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n"
    assert parse_listeners("  sl  local_address rem_address   st\n" + line) == [
        Listener(ipaddress.ip_address("127.0.0.1"), 3260)]
    # 2001:db8::123:4567:89ab:cdef, each 32-bit word's bytes reversed
    six = "   0: B80D01200000000067452301EFCDAB89:0050 00000000000000000000000000000000:0000 0A 0 0 0 0 0 0 0 0\n"
    assert parse_listeners(six) == [Listener(ipaddress.ip_address("2001:db8::123:4567:89ab:cdef"), 80)]
    assert parse_listeners("   0: garbage:zz 0 0A\n   1: 0100007F 0 0A\n") == []


def test_a_missing_file_is_no_listener(tmp_path: Path):
    assert listeners(tmp_path) == [] and port_busy("0.0.0.0", 3260, tmp_path) == []
    shutil.copy(PROC / "tcp6", tmp_path / "tcp6")  # IPv4 disabled, say: tcp6 alone is read
    assert busy("::1", 4425) == [str(b) for b in port_busy("::1", 4425, tmp_path)]
