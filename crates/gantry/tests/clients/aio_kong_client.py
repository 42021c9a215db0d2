"""Drive a running gantry with the aio-kong client (PyPI package `aio-kong`), unchanged.

Usage: KONG_ADMIN_URL=http://127.0.0.1:PORT python3 aio_kong_client.py
Exits non-zero, with the failing step, on any difference from Kong's behaviour that the client sees.
"""

import asyncio
import os
import sys

from kong.client import Kong, KongResponseError


async def main() -> None:
    async with Kong(url=os.environ["KONG_ADMIN_URL"]) as cli:
        # Services: create, read, update, list.
        srv = await cli.services.create(name="aio", host="example.com", port=8080, tags=["aio"])
        assert srv["port"] == 8080 and srv["retries"] == 5, srv
        assert (await cli.services.get("aio")).id == srv.id
        srv = await cli.services.update(srv.id, retries=2)
        assert srv["retries"] == 2, srv
        assert await cli.services.has("aio")
        assert not await cli.services.has("nope")

        # Routes under the service.
        route = await srv.routes.create(name="aio-route", paths=["/aio"], methods=["GET"])
        assert route["service"]["id"] == srv.id, route
        assert route["strip_path"] is True
        route = await cli.routes.update(route.id, strip_path=False)
        assert route["strip_path"] is False
        assert [r.id for r in await srv.routes.get_list()] == [route.id]

        # Consumers and credentials.
        consumer = await cli.consumers.create(username="aio-user", custom_id="aio-1")
        key = await consumer.keyauths.create_credentials(data={"key": "aio-key"})
        assert key["key"] == "aio-key", key
        basic = await consumer.basicauths.create_or_update_credentials({"username": "aio-b", "password": "pw"})
        assert basic["password"] != "pw", basic
        basic = await consumer.basicauths.create_or_update_credentials({"username": "aio-b", "password": "pw2"})
        assert len(await consumer.basicauths.get_list()) == 1
        acl = await consumer.acls.create(group="g1")
        assert acl["group"] == "g1"
        assert (await cli.consumers.update(consumer.id, custom_id="aio-2"))["custom_id"] == "aio-2"

        # Plugins: on a service, on a route, global; update.
        p1 = await srv.plugins.create(name="rate-limiting", config={"minute": 10})
        assert p1["config"]["minute"] == 10 and p1["config"]["policy"] == "local", p1
        p1 = await cli.plugins.update(p1.id, config={"minute": 20})
        assert p1["config"]["minute"] == 20 and p1["config"]["policy"] == "local", p1
        p2 = await route.plugins.create(name="key-auth")
        assert p2["config"]["key_names"] == ["apikey"], p2
        p3 = await cli.plugins.create(name="cors", config={"origins": ["*"]})
        assert len(await cli.plugins.get_full_list()) == 3

        # Errors come back as Kong's.
        try:
            await cli.services.create(name="aio", host="example.com")
            raise AssertionError("duplicate name accepted")
        except KongResponseError as e:
            assert e.status == 409, e
        try:
            await cli.services.create(name="bad", host="example.com", port="x")
            raise AssertionError("bad port accepted")
        except KongResponseError as e:
            assert e.status == 400 and e.message["fields"]["port"] == "expected an integer", e

        # apply_json: declarative-style upserts through the client.
        await cli.apply_json(
            {
                "services": [
                    {"name": "aj", "host": "aj.example", "routes": [{"name": "aj-r", "paths": ["/aj"]}], "plugins": [{"name": "cors"}]}
                ],
                "consumers": [{"username": "aj-user"}],
            }
        )
        aj = await cli.services.get("aj")
        assert [r["name"] for r in await aj.routes.get_list()] == ["aj-r"]

        # Certificates and their SNIs (the PEM pair comes from the test).
        cert = await cli.certificates.create(cert=os.environ["AIO_CERT"], key=os.environ["AIO_KEY"], tags=["aio"])
        sni = await cert.snis.create(name="aio.example.test")
        assert sni["certificate"]["id"] == cert.id, sni.data
        assert [x["name"] for x in await cert.snis.get_list()] == ["aio.example.test"]
        assert (await cli.snis.get("aio.example.test")).id == sni.id
        await cli.snis.apply_json([{"name": "aio2.example.test", "certificate": {"id": cert.id}}])
        await cli.snis.apply_json([{"name": "aio2.example.test", "certificate": {"id": cert.id}, "tags": ["t"]}])
        assert (await cli.snis.get("aio2.example.test"))["tags"] == ["t"]
        assert [c.id for c in await cli.certificates.get_list()] == [cert.id]

        # JWT credentials made by the node: key and secret generated, HS256.
        jwt = await consumer.jwts.get_or_create()
        assert jwt["algorithm"] == "HS256" and jwt["key"] and jwt["secret"], jwt.data
        assert (await consumer.jwts.get_or_create()).id == jwt.id

        # ACLs through the top-level collection.
        assert [a["group"] for a in await cli.acls.get_list()] == ["g1"]

        # Consumers by apply_json: ACL groups added and removed, credentials created.
        await cli.consumers.apply_json(
            {
                "username": "aj-user",
                "groups": ["ga", "gb"],
                "auths": [
                    {"type": "key-auth", "config": {"key": "aj-key"}},
                    {"type": "basic-auth", "config": {"username": "aj-b", "password": "pw"}},
                ],
            }
        )
        aju = await cli.consumers.get("aj-user")
        assert sorted(a["group"] for a in await aju.acls.get_list()) == ["ga", "gb"]
        await cli.consumers.apply_json({"username": "aj-user", "groups": ["gb"]})
        assert [a["group"] for a in await aju.acls.get_list()] == ["gb"]
        assert [k["key"] for k in await aju.keyauths.get_list()] == ["aj-key"]
        assert [b["username"] for b in await aju.basicauths.get_list()] == ["aj-b"]

        # Pagination through many pages.
        for i in range(120):
            await cli.consumers.create(username=f"page-{i:03d}")
        names = [c["username"] async for c in cli.consumers.paginate(size=25)]
        assert len(names) == 120 + 2 and len(set(names)) == len(names), len(names)

        # Deletes: the client removes routes and plugins before the service.
        await cli.plugins.delete(p3.id)
        assert await cli.services.delete(srv.id)
        assert not await cli.services.has("aio")
        assert await cli.consumers.delete(consumer.id)
        assert not await cli.routes.has("aio-route")
        await cli.delete_all()
        assert await cli.services.get_list() == []
        assert await cli.consumers.get_list() == []
        assert await cli.plugins.get_list() == []
    print("aio-kong: ok")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except (AssertionError, KongResponseError) as e:
        print(f"aio-kong: FAILED: {e!r}", file=sys.stderr)
        raise
