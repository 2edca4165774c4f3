"""Attacks from the second security review, each against the running app on both stores.

docs/SECURITY.md lists every attack with the defence and the test here that holds it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from ipaddress import ip_network
from typing import Any

import pytest
import yaml

from devservices.processes import PROJECT_ROOT
from shortener.app import STORE
from shortener.auth import create_key
from shortener.config import Settings
from shortener.web.ops import READINESS_INTERVAL
from tests.conftest import Keys
from tests.contract import ContractClient
from tests.test_api import LINKS, create

# Inputs that once reached a 500: the URL parser, date arithmetic or the store overflowed.
BAD_URLS = ["http://[::1", "http://[1.2.3.4]/", "http://[::ffff:127.1]/", "http://[zz]/"]
BAD_EXPIRIES = ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"]
# "id:" and 19 nines, and 20 nines: past 2**63 - 1, the largest id the stores hold.
BAD_CURSORS = ["aWQ6OTk5OTk5OTk5OTk5OTk5OTk5OQ", "aWQ6OTk5OTk5OTk5OTk5OTk5OTk5OTk"]


def field_errors(reply: Any) -> list[str]:
    return [error["field"] for error in reply.json()["errors"]]


@pytest.mark.parametrize(
    ("field", "value"),
    [("url", url) for url in BAD_URLS] + [("expires_at", moment) for moment in BAD_EXPIRIES],
)
async def test_inputs_that_overflowed_are_400_on_create_and_patch(
    client: ContractClient, keys: Keys, field: str, value: str
) -> None:
    body = {"url": "https://example.com/", field: value}
    created = await client.post(LINKS, json=body, headers=keys.of(keys.alice))
    assert created.status == 400 and field_errors(created) == [field]
    link = await create(client, keys.alice, url="https://example.com/")
    patched = await client.patch(
        f"{LINKS}/{link['code']}", json={field: value}, headers=keys.of(keys.alice)
    )
    assert patched.status == 400 and field_errors(patched) == [field]


@pytest.mark.parametrize("cursor", BAD_CURSORS)
async def test_cursor_past_64_bits_is_400(client: ContractClient, keys: Keys, cursor: str) -> None:
    await create(client, keys.alice, url="https://example.com/")
    reply = await client.get(f"{LINKS}?cursor={cursor}", headers=keys.of(keys.alice))
    assert reply.status == 400 and field_errors(reply) == ["cursor"]


LOOPBACK_BASE = "http://127.0.0.1:18300"


@pytest.mark.parametrize(
    ("base", "looping", "elsewhere"),
    [
        (
            LOOPBACK_BASE,
            [
                "http://127.1:18300/a",
                "http://0x7f000001:18300/a",
                "http://2130706433:18300/a",
                "http://0177.0.0.1:18300/a",
                "http://localhost:18300/a",
                "http://LOCALHOST.:18300/a",
                "http://app.localhost:18300/a",
                "http://[::ffff:127.0.0.1]:18300/a",
                "http://[::ffff:7f00:1]:18300/a",
                "http://[::1]:18300/a",
                "http://0.0.0.0:18300/a",
            ],
            [
                "http://127.0.0.1.example.com:18300/a",
                "https://example.com/",
                "http://127.0.0.2:18300/a",  # another loopback address is another host
            ],
        ),
        (
            "https://93.184.216.34",
            [
                "https://1572395042/a",
                "https://0x5db8d822/a",
                "https://93.184.55330/a",
                "https://[::ffff:93.184.216.34]/a",
                "https://[64:ff9b::93.184.216.34]/a",
                "https://[2002:5db8:d822::]/a",
            ],
            ["https://93.184.216.35/a", "https://localhost.example.com/"],
        ),
        ("https://sho.rt", ["https://SHO.RT./a", "http://sho.rt:8443/a"], ["https://sho.rt.io/"]),
    ],
)
async def test_links_to_the_service_itself_in_any_spelling_are_refused(
    make_client: Any, settings: Settings, base: str, looping: list[str], elsewhere: list[str]
) -> None:
    client = await make_client(dataclasses.replace(settings, base_url=base))
    _, key = await create_key(client.app[STORE], "k", admin=True)
    headers = {"Authorization": f"Bearer {key}"}
    for url in looping:
        reply = await client.post(LINKS, json={"url": url}, headers=headers)
        assert reply.status == 400, url
        assert "loop" in reply.json()["errors"][0]["message"], url
    link = await create(client, key, url=elsewhere[0])
    for url in looping:
        patched = await client.patch(f"{LINKS}/{link['code']}", json={"url": url}, headers=headers)
        assert patched.status == 400, url
    for url in elsewhere:
        assert (await client.post(LINKS, json={"url": url}, headers=headers)).status == 201, url


# Each form decided in docs/SECURITY.md ("Where links may point").
PRIVATE_FORMS = [
    "http://[::127.0.0.1]/",  # IPv4-compatible IPv6, deprecated: the whole ::/96 is refused
    "http://[::8.8.8.8]/",
    "http://[64:ff9b::7f00:1]/",  # NAT64 to 127.0.0.1: judged by the IPv4 address it reaches
    "http://[64:ff9b::10.0.0.1]/",
    "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1: likewise
    "http://[2002:c0a8:1::1]/",  # 6to4 of 192.168.0.1
    "http://localhost.localdomain/",
    "http://printer.localdomain/",
    "http://127.0.0.1.nip.io/",  # a public name that spells a private address
    "http://app.10.0.0.1.sslip.io/",
    "http://127-0-0-1.sslip.io/",
    "http://app-192-168-1-1.nip.io/",
]
PUBLIC_FORMS = [
    "http://[64:ff9b::808:808]/",
    "http://[2002:808:808::1]/",
    "http://8.8.8.8.nip.io/",
    "http://app-93-184-216-34.sslip.io/",
    "http://2001.example.com/",
    "http://10.example.com/",
]


async def test_private_targets_in_every_spelling_are_refused_for_keyless_creation(
    make_client: Any, settings: Settings
) -> None:
    public = await make_client(
        dataclasses.replace(settings, public_create=True, public_create_per_minute=1000)
    )
    for url in PRIVATE_FORMS:
        reply = await public.post(LINKS, json={"url": url})
        assert reply.status == 400, url
        assert "private" in reply.json()["errors"][0]["message"], url
    for url in PUBLIC_FORMS:
        assert (await public.post(LINKS, json={"url": url})).status == 201, url


async def test_other_sites_cannot_create_links_through_their_visitors(
    make_client: Any, settings: Settings
) -> None:
    public = await make_client(
        dataclasses.replace(settings, public_create=True, public_create_per_minute=1000)
    )
    body = b'{"url": "https://evil.example/"}'
    # What a page of another site can send without a CORS preflight: a form or text/plain.
    # Refused by its type alone, and by its Origin when the browser names one.
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]:
        reply = await public.post(LINKS, data=body, headers={"Content-Type": content_type})
        assert reply.status == 415, content_type
        assert reply.json()["type"].endswith(":unsupported-media-type")
        reply = await public.post(
            LINKS,
            data=body,
            headers={"Content-Type": content_type, "Origin": "https://attacker.example"},
        )
        assert reply.status == 403, content_type
    # JSON needs a preflight, which the service never grants; an Origin tells even so.
    for origin in ["https://attacker.example", "null", "https://sho.rt.attacker.example"]:
        reply = await public.post(
            LINKS, json={"url": "https://evil.example/"}, headers={"Origin": origin}
        )
        assert reply.status == 403, origin
    _, key = await create_key(public.app[STORE], "k", admin=True)
    listing = await public.get(LINKS, headers={"Authorization": f"Bearer {key}"})
    assert listing.json()["items"] == []
    # The service's own page, and clients that are not browsers, still create.
    own = await public.post(
        LINKS, json={"url": "https://example.com/"}, headers={"Origin": "https://sho.rt"}
    )
    assert own.status == 201
    assert (await public.post(LINKS, json={"url": "https://example.com/"})).status == 201
    link = own.json()
    patched = await public.patch(
        f"{LINKS}/{link['code']}",
        data=b'{"url": "https://example.com/b"}',
        headers={"Authorization": f"Bearer {key}", "Content-Type": "text/plain"},
    )
    assert patched.status == 415


async def test_readyz_answers_from_background_probes_not_a_ping_per_call(
    client: ContractClient,
) -> None:
    store = client.app[STORE]
    pings = 0
    ping = store.ping

    async def counted_ping() -> None:
        nonlocal pings
        pings += 1
        await ping()

    store.ping = counted_ping  # type: ignore[method-assign]
    started = time.monotonic()
    replies = await asyncio.gather(*(client.get("/readyz") for _ in range(300)))
    elapsed = time.monotonic() - started
    assert {reply.status for reply in replies} == {200}
    assert replies[0].json()["dependencies"]["store"]["status"] == "up"
    # Only the background probe pings, once per READINESS_INTERVAL; 300 calls made none.
    assert pings <= 1 + elapsed / READINESS_INTERVAL


@pytest.fixture
async def limited(
    postgres_url: str, redis_url: str, make_client: Any
) -> tuple[ContractClient, dict[str, str]]:
    """An app behind a trusted loopback proxy, with small limits; and an admin key's header."""
    settings = Settings(
        database_url=postgres_url,
        redis_url=redis_url,
        base_url="https://sho.rt",
        public_create=True,
        public_create_per_minute=3,
        not_found_per_minute=3,
        trusted_proxies=(ip_network("127.0.0.0/8"), ip_network("::1/128")),
    )
    client = await make_client(settings)
    _, key = await create_key(client.app[STORE], "admin", admin=True)
    return client, {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("backend_url", ["postgres"], indirect=True)
async def test_limits_count_an_ipv6_slash_64_as_one_client(
    limited: tuple[ContractClient, dict[str, str]],
) -> None:
    client, admin = limited
    statuses = []
    for host in range(1, 5):  # a new address of the same /64 for every request
        reply = await client.post(
            LINKS,
            json={"url": "https://example.com/"},
            headers={"X-Forwarded-For": f"2001:db8:1:2::{host:x}"},
        )
        statuses.append(reply.status)
    assert statuses == [201, 201, 201, 429]
    other = {"X-Forwarded-For": "2001:db8:1:3::1"}
    assert (
        await client.post(LINKS, json={"url": "https://example.com/"}, headers=other)
    ).status == 201

    link = await create(client, admin["Authorization"].split()[1], url="https://example.com/r")
    scans = [
        (await client.get(f"/guess{n}", headers={"X-Forwarded-For": f"2001:db8:9:9:{n}::1"})).status
        for n in range(1, 5)
    ]
    assert scans == [404, 404, 404, 429]
    rotated = {"X-Forwarded-For": "2001:db8:9:9:ffff::1"}
    assert (await client.get(f"/{link['code']}", headers=rotated)).status == 429


# What a browser sends for an <img> on another site's page, and for following a link.
EMBEDDED = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}
NAVIGATION = {
    "Sec-Fetch-Site": "cross-site",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-Dest": "document",
}


@pytest.mark.parametrize("backend_url", ["postgres"], indirect=True)
async def test_a_page_elsewhere_cannot_get_its_visitors_refused(
    limited: tuple[ContractClient, dict[str, str]],
) -> None:
    client, admin = limited
    link = await create(client, admin["Authorization"].split()[1], url="https://example.com/r")
    victim = {"X-Forwarded-For": "198.51.100.20"}
    # The page's <img> tags of made-up codes: past the limit they are refused...
    loads = [
        (await client.get(f"/made-up{n}", headers={**victim, **EMBEDDED})).status for n in range(4)
    ]
    assert loads == [404, 404, 404, 429]
    assert (await client.get(f"/{link['code']}", headers={**victim, **EMBEDDED})).status == 429
    # ...but the visitor following a link, or asking directly, is not.
    assert (await client.get(f"/{link['code']}", headers={**victim, **NAVIGATION})).status == 302
    assert (await client.get(f"/{link['code']}", headers=victim)).status == 302
    # A scanner that sends those headers itself gains one more budget, not an unlimited one.
    scanner = {"X-Forwarded-For": "198.51.100.30"}
    for headers in ({**scanner, **EMBEDDED}, scanner):
        scans = [(await client.get(f"/guess{n}", headers=headers)).status for n in range(4)]
        assert scans == [404, 404, 404, 429]
        assert (await client.get(f"/{link['code']}", headers=headers)).status == 429


def test_kubernetes_pods_admit_only_the_proxies_whose_forwarded_for_they_believe() -> None:
    """The manifests believe X-Forwarded-For from all of 10.0.0.0/8 (the pod network): that
    holds only while no pod but the ingress controller (and Prometheus) can connect."""
    k8s = PROJECT_ROOT / "deploy" / "kubernetes"
    config = yaml.safe_load((k8s / "configmap.yaml").read_text(encoding="utf-8"))
    trusted = config["data"]["SHORTENER_TRUSTED_PROXIES"]
    assert trusted == "10.0.0.0/8", "a change here must be judged against networkpolicy.yaml"
    assert (
        "networkpolicy.yaml"
        in yaml.safe_load((k8s / "kustomization.yaml").read_text())["resources"]
    )
    policy = yaml.safe_load((k8s / "networkpolicy.yaml").read_text(encoding="utf-8"))
    deployment = yaml.safe_load((k8s / "deployment.yaml").read_text(encoding="utf-8"))
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    assert spec["podSelector"]["matchLabels"].items() <= pod_labels.items()
    sources = []
    for rule in spec["ingress"]:
        assert rule.get("from"), "a rule without 'from' admits every pod"
        for peer in rule["from"]:
            assert set(peer) == {"namespaceSelector"}, f"only whole namespaces: {peer}"
            sources.append(peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"])
    assert sorted(sources) == ["ingress-nginx", "monitoring"]
