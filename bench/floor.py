"""The floor: the least a Flask app under the same gunicorn settings can do for a POST.
Its handler only parses the JSON body and answers a fixed 200 JSON.

    gunicorn --config gunicorn.conf.py 'bench.floor:app'
"""

from flask import Flask, request

app = Flask(__name__)


@app.post("/api/v1/customers")
def upsert():
    request.get_json(force=True)
    return {"customer": {"lago_id": "00000000-0000-0000-0000-000000000000"}}


@app.get("/health")
def health():
    return {"status": "ok"}
