"""The address guard of worker/fetch.py: which addresses a request may reach."""

import ipaddress

import pytest

from worker.errors import ConfigError
from worker.fetch import (
    SPECIAL_PURPOSE_V4,
    SPECIAL_PURPOSE_V6,
    address_refusal,
    allow_networks_from_env,
    parse_networks,
)

REFUSED = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.0.0.1", "private"),
    ("10.255.255.1", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),  # cloud metadata
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.100.100.200", "carrier-grade NAT"),  # cloud metadata; ipaddress: not is_private
    ("100.127.255.255", "carrier-grade NAT"),
    ("0.0.0.0", "this host on this network"),
    ("0.1.2.3", "this network"),
    ("224.0.0.1", "multicast"),  # ipaddress: is_global
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),  # reserved for future use
    ("255.255.255.255", "limited broadcast"),
    ("192.0.2.1", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("fc00::1", "unique-local"),
    ("fd12:3456::1", "unique-local"),
    ("fec0::1", "site-local (deprecated)"),  # ipaddress: is_global
    ("ff02::1", "multicast"),  # ipaddress: is_global
    ("ff05::1:3", "multicast"),
    ("2001:db8::1", "documentation"),
    ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
    ("::ffff:10.0.0.1", "private"),
    ("::ffff:169.254.169.254", "link-local"),
    ("::7f00:1", "reserved"),  # deprecated IPv4-compatible ::127.0.0.1
    ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 169.254.169.254; ipaddress: is_global
    ("64:ff9b::7f00:1", "loopback"),
    ("64:ff9b::a00:1", "private"),
    ("64:ff9b:1::a9fe:a9fe", "IPv4-IPv6 translation, local use"),  # never unwrapped
    ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
    ("2002:a9fe:a9fe::1", "link-local"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
]

ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "100.63.255.255",  # just below carrier-grade NAT
    "100.128.0.1",  # just above it
    "172.15.255.255",
    "172.32.0.1",
    "2606:4700::1111",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8
    "2002:808:808::1",  # 6to4 of 8.8.8.8
    "192.88.98.255",  # just below the 6to4 relay block
    "192.88.100.1",
    "3fff:1000::1",  # just above 3fff::/20
]


@pytest.mark.parametrize(("address", "reason"), REFUSED)
def test_non_public_addresses_are_refused_with_their_kind(address, reason):
    assert address_refusal(address) == reason


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address):
    assert address_refusal(address) is None


def test_allowed_networks_override_the_refusal():
    allowed = parse_networks(["127.0.0.0/8", "fd00::/8"])
    assert address_refusal("127.0.0.1", allowed) is None
    assert address_refusal("::ffff:127.0.0.1", allowed) is None  # unwrapped before matching
    assert address_refusal("fd12::1", allowed) is None
    assert address_refusal("::1", allowed) == "loopback"
    assert address_refusal("10.0.0.1", allowed) == "private"


def test_allow_networks_from_env_reads_comma_separated_cidrs():
    env = {"NEWSMON_ALLOW_NETWORKS": " 127.0.0.0/8, ::1/128 ,,10.1.0.0/16"}
    assert allow_networks_from_env(env) == ["127.0.0.0/8", "::1/128", "10.1.0.0/16"]
    assert allow_networks_from_env({}) == []


def test_allow_networks_from_env_names_a_bad_cidr():
    with pytest.raises(ConfigError) as caught:
        allow_networks_from_env({"NEWSMON_ALLOW_NETWORKS": "127.0.0.0/8,10.0.0.0/33,intranet"})
    assert len(caught.value.problems) == 2
    assert "NEWSMON_ALLOW_NETWORKS: '10.0.0.0/33'" in caught.value.problems[0]
    assert "'intranet'" in caught.value.problems[1]


# Prefixes that carry an IPv4 address: judged by the address inside (see ALLOWED).
TRANSLATION = {"::ffff:0:0/96", "64:ff9b::/96", "2002::/16"}


@pytest.mark.parametrize(("network", "name", "source"), [
    row for row in SPECIAL_PURPOSE_V4 + SPECIAL_PURPOSE_V6 if row[0] not in TRANSLATION])
def test_every_special_purpose_registry_entry_is_refused_from_first_to_last_address(
        network, name, source):
    net = ipaddress.ip_network(network)
    assert source.startswith("RFC ")
    for address in (net[0], net[-1], net[net.num_addresses // 2]):
        assert address_refusal(address) is not None, address


@pytest.mark.parametrize("prefix", sorted(TRANSLATION))
def test_translation_prefixes_are_judged_by_the_ipv4_address_inside(prefix):
    net = ipaddress.ip_network(prefix)
    shift = 80 if prefix == "2002::/16" else 0  # 6to4 puts the IPv4 address after 16 bits
    inside = {address: int(ipaddress.ip_address(address)) << shift
              for address in ("8.8.8.8", "192.88.99.1", "127.0.0.1", "100.100.100.200")}
    verdicts = {a: address_refusal(ipaddress.ip_address(int(net[0]) | bits))
                for a, bits in inside.items()}
    assert verdicts == {a: address_refusal(a) for a in inside}
    assert verdicts["8.8.8.8"] is None and None not in list(verdicts.values())[1:]


def test_the_registries_are_all_there():
    """The IANA registries as published (24 IPv4 entries counting 192.0.0.170/31 as the two
    it lists; 25 IPv6): a dropped row fails here."""
    v4 = {net for net, _, _ in SPECIAL_PURPOSE_V4}
    v6 = {net for net, _, _ in SPECIAL_PURPOSE_V6}
    assert {"192.88.99.0/24", "100.64.0.0/10", "192.0.0.170/31", "240.0.0.0/4"} <= v4
    assert {"3fff::/20", "5f00::/16", "2001:db8::/32", "fc00::/7", "2002::/16"} <= v6
    assert len(v4) == 24 and len(v6) == 25
