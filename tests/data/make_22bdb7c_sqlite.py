"""Made once, with the code of commit 22bdb7c (the last release before schema versions
existed), to keep a database of that release under tests/data:

    git worktree add /tmp/old 22bdb7c
    .venv/bin/python tests/data/make_22bdb7c_sqlite.py tests/data/customers-22bdb7c.db

It writes the database and, beside it, the keys it minted (test keys of that file only).
"""

import json
import sys

sys.path.insert(0, "/tmp/old")
from app import create_app

out = sys.argv[1]
app = create_app({"DATABASE_URL": f"sqlite:///{out}", "API_KEY": "old-env-key"})
runner = app.test_cli_runner()
keys = {}
for org in ("Pied Piper", "Hooli"):
    result = runner.invoke(args=["keys", "create", "--org", org])
    keys[org] = result.output.strip().splitlines()[-1]
client = app.test_client()


def post(key, customer):
    r = client.post(
        "/api/v1/customers", json={"customer": customer}, headers={"Authorization": f"Bearer {key}"}
    )
    assert r.status_code == 200, r.get_json()
    return r.get_json()["customer"]


post(
    keys["Pied Piper"],
    {
        "customer_id": "pp-1",
        "name": "Richard Hendricks",
        "country": "us",
        "city": "Palo Alto",
        "email": "richard@piedpiper.test",
        "address_line1": "5230 Penfield Ave",
        "zipcode": "91364",
        "url": "http://piedpiper.test",
    },
)
post(
    keys["Pied Piper"],
    {
        "customer_id": "pp-2/slash ünïcödé 🚀",
        "name": "Dinesh",
        "legal_name": "Chugtai Inc",
        "phone": "1-171-883-3711 x245",
    },
)
post(
    keys["Pied Piper"],
    {
        "customer_id": "pp-3",
        "name": "Gilfoyle",
        "country": "CA",
        "logo_url": "http://x.test/" + "l" * 600,
    },
)
post(keys["Pied Piper"], {"customer_id": "pp-4", "name": "To be deleted"})
assert (
    client.delete(
        "/api/v1/customers/pp-4", headers={"Authorization": f"Bearer {keys['Pied Piper']}"}
    ).status_code
    == 200
)
post(
    keys["Hooli"],
    {
        "customer_id": "pp-1",
        "name": "Gavin Belson",
        "country": "US",
        "state": "CA",
        "legal_number": "49-008-2965",
    },
)
post(
    "old-env-key",
    {"customer_id": "default-1", "name": "Default org customer", "address_line2": "Suite 1"},
)
post(
    keys["Pied Piper"], {"customer_id": "pp-1", "name": "Richard Hendricks", "city": None}
)  # an update
revoked = runner.invoke(args=["keys", "create", "--org", "Hooli"]).output.strip().splitlines()[-1]
assert runner.invoke(args=["keys", "revoke", revoked[:11]]).exit_code == 0
app.extensions["customers.db"].close_all()
json.dump(
    {"keys": keys, "revoked": revoked, "env_key": "old-env-key"},
    open(out + ".keys.json", "w"),
    indent=1,
)
