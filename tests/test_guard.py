"""The address guard of worker/fetch.py: which addresses a request may reach."""

import pytest

from worker.errors import ConfigError
from worker.fetch import address_refusal, allow_networks_from_env, parse_networks

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
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "private"),  # "this network"
    ("224.0.0.1", "multicast"),  # ipaddress: is_global
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "private"),  # reserved for future use
    ("255.255.255.255", "private"),  # broadcast
    ("192.0.2.1", "private"),  # documentation
    ("198.18.0.1", "private"),  # benchmarking
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("fc00::1", "private"),
    ("fd12:3456::1", "private"),
    ("fec0::1", "site-local"),  # ipaddress: is_global
    ("ff02::1", "multicast"),  # ipaddress: is_global
    ("ff05::1:3", "multicast"),
    ("2001:db8::1", "private"),  # documentation
    ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
    ("::ffff:10.0.0.1", "private"),
    ("::ffff:169.254.169.254", "link-local"),
    ("::7f00:1", "reserved"),  # deprecated IPv4-compatible ::127.0.0.1
    ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 169.254.169.254; ipaddress: is_global
    ("64:ff9b::7f00:1", "loopback"),
    ("64:ff9b::a00:1", "private"),
    ("64:ff9b:1::a9fe:a9fe", "reserved"),  # local-use NAT64 prefix, never unwrapped
    ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
    ("2002:a9fe:a9fe::1", "link-local"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "private"),  # Teredo
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
