"""The server's API description (OpenAPI 3.1), generated from the msgspec types that decode the
requests — the served model's own RankBody (one field per input feature, typed by its input
kinds) and the retriever's RecommendBody and ItemsBody (likewise) — so the document cannot
drift from what is accepted. It is rebuilt for every GET /openapi.json: a reloaded model with
other features is described as it is. `DOCS_PAGE` renders it at /docs without any network
access (no CDN).
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from streamrec.serving.action_intake import FeedbackBody, latest_action_time
from streamrec.serving.variants import PromoteBody

_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string", "description": "what is wrong, and where"}},
    "required": ["error"],
}


def _errors(*codes: int) -> dict[str, Any]:
    reasons = {
        401: "missing or wrong bearer token (--token)",
        403: "routing changes need a server started with --token",
        404: "this server has no retrieval stage (recommend, items) or no such variant",
        409: "not possible now: promoting a shadow, or nothing to roll back",
        413: "body or candidate list over the limit (serving.max_body_bytes / max_candidates)",
        422: "the body does not match the schema; `error` gives the JSON path",
        503: "overloaded (Retry-After), no model loaded, the model returned non-finite "
        "scores, or the action stream's queue is full (Retry-After)",
    }
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {str(c): {"description": reasons[c], "content": ref} for c in codes}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _post(summary: str, body: str, ok: dict[str, Any], codes: tuple[int, ...]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}
                },
            },
            "responses": {"200": ok, **_errors(*codes)},
        }
    }


def _get(summary: str, ok: dict[str, Any], guarded: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": ok}}
    if guarded:
        op["responses"].update(_errors(401))  # under --token
    else:
        op["security"] = []  # open even under --token
    return {"get": op}


_VARIANT = {
    "type": "string",
    "description": "with several model variants (--variant): the one that answered",
}


def openapi_document(
    rank_body: type,
    tasks: list[str],
    model: dict[str, Any],
    retrieval: tuple[type, type] | None,
    token: bool,
    token_guards_health: bool,
    variants: bool = False,
    feedback: bool = False,
) -> dict[str, Any]:
    """rank_body: the served snapshot's request type (`RankRequestReader.body_type`); tasks:
    the model's score names; model: name and version for `info`; retrieval: the retriever's
    (RecommendBody, ItemsBody) types, None without one."""
    types: list[type] = [rank_body] + (list(retrieval) if retrieval else [])
    types += [PromoteBody] if variants else []
    types += [FeedbackBody] if feedback else []
    _, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    if feedback:  # an action dated beyond this clock + a day is refused: say so, as of now
        when = components["FeedbackBody"]["properties"]["time"]["anyOf"][0]
        when["maximum"] = latest_action_time(time.time())
        when["description"] = "seconds since 1970 (the action's own time; default: now)"
    components["Error"] = _ERROR
    scores = {
        "type": "object",
        "properties": {t: {"type": "array", "items": {"type": "number"}} for t in tasks},
        "description": "one list per task, in candidate order: calibrated probabilities",
    }
    rank_ok = _json(
        {
            "type": "object",
            "properties": {
                "model_version": {"type": "string"},
                "scores": scores,
                "request_id": {"type": "string"},
                "variant": _VARIANT,
            },
            "required": ["model_version", "scores", "request_id"],
        },
        "scores of every candidate",
    )
    paths: dict[str, Any] = {
        "/v1/rank": _post(
            "Score candidates for one context", rank_body.__name__, rank_ok,
            (401, 413, 422, 503),
        ),
        "/v1/model": _get("The served model: versions, deltas, reloads, cache",
                          _json({"type": "object"}, "model description")),
        "/v1/status": _get(
            "What the status page (GET /) shows: versions, freshness, recent traffic, cache, "
            "responses by status, degraded reasons, last reload, training health",
            _json({"type": "object"}, "the server's status"),
        ),
        "/healthz": _get("Liveness", _json({"type": "object"}, "alive"), token_guards_health),
        "/readyz": _get(
            "Readiness (200 also when degraded: the reasons say why)",
            _json({"type": "object"}, "ready, status and degraded reasons"),
            token_guards_health,
        ),
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "text exposition format 0.0.4",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(401),
                },
            }
        },
    }
    if retrieval:
        paths["/v1/recommend"] = _post(
            "Retrieve candidates for a user, rank them, return the top k",
            "RecommendBody",
            _json(
                {
                    "type": "object",
                    "properties": {
                        "items": {"type": "array", "items": {"type": "integer"}},
                        "scores": {"type": "array", "items": {"type": "number"}},
                        "retrieved": {"type": "integer"},
                        "versions": {"type": "object"},
                        "request_id": {"type": "string"},
                        "scored_by": {
                            "enum": ["retrieval", "preranking", "ranking"],
                            "description": "the stage whose scores order the items (a "
                            "compute level without ranking stops earlier)",
                        },
                        "level": {
                            "type": "string",
                            "description": "with compute allocation (--slo-ms): the level "
                            "this request got, e.g. k1=1000,k2=100",
                        },
                        "variant": _VARIANT,
                        "debug": {
                            "type": "object",
                            "description": "with \"debug\": true — items per stage "
                            "(retrieved, preranked, ranked) and seconds per stage",
                        },
                    },
                },
                "the top k items and their scores",
            ),
            (401, 404, 413, 422, 503),
        )
        paths["/v1/items"] = _post(
            "Index new or changed items without a rebuild",
            "ItemsBody",
            _json({"type": "object"}, "how many were indexed"),
            (401, 404, 413, 422),
        )
    if feedback:
        op = _post(
            "A user's action on an item of an answer → the action stream the online joiner "
            "reads (serve --actions)",
            "FeedbackBody",
            _json({"type": "object"}, ""),
            (401, 413, 422, 503),
        )
        op["post"]["responses"]["202"] = _json(
            {
                "type": "object",
                "properties": {
                    "accepted": {"type": "boolean"},
                    "known_request": {
                        "type": "boolean",
                        "description": "whether this server answered that request lately",
                    },
                },
            },
            "queued for the action stream",
        )
        del op["post"]["responses"]["200"]
        paths["/v1/feedback"] = op
    if variants:
        paths["/v1/variants"] = _get(
            "Model variants: split, policy, health, clicks, shadow comparisons",
            _json({"type": "object"}, "the variants"),
        )
        paths["/v1/variants/promote"] = _post(
            "All traffic to one variant (the split before is kept for a rollback)",
            "PromoteBody",
            _json({"type": "object"}, "the new weights"),
            (401, 403, 404, 409, 422),
        )
        paths["/v1/variants/rollback"] = {
            "post": {
                "summary": "Back to the split before the last promotion",
                "responses": {
                    "200": _json({"type": "object"}, "the restored weights"),
                    **_errors(401, 403, 409),
                },
            }
        }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": f"streamrec server — {model.get('name') or 'model'}",
            "version": str(model.get("version", "0")),
            "description": "Ranking (and, with a retriever, recommendation) over HTTP.",
        },
        "paths": paths,
        "components": {"schemas": components},
    }
    if token:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    return document


DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>streamrec API</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:60em;color:#222}
h1{font-size:1.4em}.op{border:1px solid #ddd;border-radius:6px;margin:1em 0;padding:.6em 1em}
.m{font-weight:bold;text-transform:uppercase;margin-right:.6em;color:#06c}
pre{background:#f6f6f6;padding:.6em;overflow:auto;font-size:12px}
.code{display:inline-block;min-width:3em;font-weight:bold}
</style></head><body>
<h1 id="title">streamrec API</h1><p id="desc"></p><div id="ops">loading /openapi.json …</div>
<script>
function deref(doc, s, depth){
  if(!s||typeof s!=='object'||depth>6) return s;  // strings (a `required` name) as they are
  if(s.$ref){return deref(doc, doc.components.schemas[s.$ref.split('/').pop()], depth+1);}
  var out={}; for(var k in s){var v=s[k];
    if(v&&typeof v==='object'){
      out[k]=Array.isArray(v)?v.map(function(x){return deref(doc,x,depth+1)})
                             :deref(doc,v,depth+1);}
    else out[k]=v;}
  return out;
}
function show(doc){
  document.getElementById('title').textContent=doc.info.title+' (version '+doc.info.version+')';
  document.getElementById('desc').textContent=doc.info.description||'';
  var ops=document.getElementById('ops'); ops.textContent='';
  Object.keys(doc.paths).sort().forEach(function(path){
    var item=doc.paths[path];
    Object.keys(item).forEach(function(method){
      var op=item[method], div=document.createElement('div'); div.className='op';
      var h=document.createElement('div');
      h.innerHTML='<span class="m"></span><code></code> — <span></span>';
      h.children[0].textContent=method; h.children[1].textContent=path;
      h.children[2].textContent=op.summary||''; div.appendChild(h);
      var body=op.requestBody&&op.requestBody.content['application/json'];
      if(body){var pre=document.createElement('pre');
        pre.textContent='request body: '+JSON.stringify(deref(doc,body.schema,0),null,1);
        div.appendChild(pre);}
      Object.keys(op.responses||{}).forEach(function(code){
        var r=document.createElement('div');
        r.innerHTML='<span class="code"></span><span></span>';
        r.children[0].textContent=code; r.children[1].textContent=op.responses[code].description;
        div.appendChild(r);});
      ops.appendChild(div);});});
}
function load(){
  var token=sessionStorage.getItem('streamrec-token');
  fetch('/openapi.json',{headers:token?{Authorization:'Bearer '+token}:{}}).then(function(r){
    if(r.status===401){var t=prompt('This server needs its --token:');
      if(t){sessionStorage.setItem('streamrec-token',t);return load();} throw 'unauthorized';}
    return r.json();}).then(show).catch(function(e){
      document.getElementById('ops').textContent='cannot load /openapi.json: '+e;});
}
load();
</script></body></html>
"""
