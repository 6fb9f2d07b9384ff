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


def _post(
    summary: str,
    body: str,
    ok: dict[str, Any],
    codes: tuple[int, ...],
    description: str | None = None,
    example: Any = None,
) -> dict[str, Any]:
    content: dict[str, Any] = {"schema": {"$ref": f"#/components/schemas/{body}"}}
    if example is not None:
        content["example"] = example  # what /docs pre-fills: a body this server answers
    op: dict[str, Any] = {
        "summary": summary,
        "requestBody": {"required": True, "content": {"application/json": content}},
        "responses": {"200": ok, **_errors(*codes)},
    }
    if description:
        op["description"] = description
    return {"post": op}


def _get(summary: str, ok: dict[str, Any], guarded: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": ok}}
    if guarded:
        op["responses"].update(_errors(401))  # under --token
    else:
        op["security"] = []  # open even under --token
    return {"get": op}


def _example_value(kind: str, n: int) -> Any:
    """A value of an input kind (`streamrec.kinds`): the n-th id, a float, a string."""
    if kind.startswith("list<"):
        return [_example_value(kind[5:-1], n)]
    return {"int": n, "float": 1.0}.get(kind, "a")


def request_examples(
    kinds: dict[str, str],
    context_features: list[str],
    candidate_features: list[str],
    user_kinds: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Bodies this server answers, one per operation, filled for every input the models read
    (context once, two candidates; a retriever's user features): what /docs pre-fills."""
    out: dict[str, Any] = {
        "rank": {
            "context": {f: _example_value(kinds[f], 1) for f in context_features},
            "candidates": [
                {f: _example_value(kinds[f], n) for f in candidate_features} for n in (1, 2)
            ],
        }
    }
    if user_kinds is not None:
        out["recommend"] = {
            "user": {f: _example_value(k, 1) for f, k in sorted(user_kinds.items())},
            "k": 10,
        }
    return out


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
    examples: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """rank_body: the served snapshot's request type (`RankRequestReader.body_type`); tasks:
    the model's score names; model: name and version for `info`; retrieval: the retriever's
    (RecommendBody, ItemsBody) types, None without one; examples: request bodies by operation
    ("rank", "recommend") that this server answers, shown and sent by /docs."""
    examples = examples or {}
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
                "uncertainty": {
                    "type": "array",
                    "items": {"type": "number", "minimum": 0},
                    "description": "models that estimate it (lr, gbdt_lr): the standard "
                    "deviation of the first task's logit per candidate, large for ids seen "
                    "rarely",
                },
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
            description="Context features apply to every candidate. A model input left out "
            "(or null) is missing: it reads what an empty cell of the training file reads, is "
            "counted per feature in streamrec_missing_feature_values_total, and the response "
            "names it in the X-Missing-Features header. An unknown feature is a 422.",
            example=examples.get("rank"),
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
                        "explored": {
                            "type": "integer",
                            "description": "with serving.explore_share and a ranker that "
                            "estimates its uncertainty: how many of the last items were chosen "
                            "by Thompson sampling rather than by score",
                        },
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
            example=examples.get("recommend"),
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
textarea{width:100%;font:12px monospace;box-sizing:border-box}
button{margin:.3em 0;padding:.2em 1em}.ok{color:#070}.bad{color:#b00}
details{margin:.3em 0}summary{cursor:pointer;color:#555}
</style></head><body>
<h1 id="title">streamrec API</h1><p id="desc"></p>
<p>Each operation below can be sent from this page: edit the example body, press
<b>Send</b>. The raw description is <a href="/openapi.json">/openapi.json</a>.</p>
<div id="ops">loading /openapi.json …</div>
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
function sample(s, depth){
  // an example value valid for schema s: its example or default, else the simplest fit
  if(!s||depth>8) return null;
  if(s.example!==undefined) return s.example;
  if(s['default']!==undefined) return s['default'];
  if(s.anyOf){var t=s.anyOf.filter(function(x){return x.type!=='null'});
    return t.length?sample(t[0],depth+1):null;}
  if(s['enum']) return s['enum'][0];
  if(s.type==='object'){var o={};
    Object.keys(s.properties||{}).forEach(function(k){o[k]=sample(s.properties[k],depth+1)});
    return o;}
  if(s.type==='array'){var n=Math.max(s.minItems||0,1), a=[];
    for(var i=0;i<n;i++) a.push(sample(s.items,depth+1)); return a;}
  if(s.type==='integer') return Math.max(s.minimum===undefined?1:s.minimum,1);
  if(s.type==='number') return s.minimum===undefined?0.5:s.minimum;
  if(s.type==='string') return 'a';
  if(s.type==='boolean') return false;
  return null;
}
function headers(){
  var token=sessionStorage.getItem('streamrec-token'), h={'Content-Type':'application/json'};
  if(token) h.Authorization='Bearer '+token;
  return h;
}
function send(method, path, area, out){
  out.textContent='sending …'; out.className='';
  var init={method:method.toUpperCase(),headers:headers()};
  if(area) init.body=area.value;
  return fetch(path,init).then(function(r){return r.text().then(function(text){
    var shown=text; try{shown=JSON.stringify(JSON.parse(text),null,1);}catch(e){}
    out.setAttribute('data-status',String(r.status));
    out.className=r.ok?'ok':'bad';
    out.textContent=r.status+' '+r.statusText+'\\n'+shown;});
  }).catch(function(e){out.setAttribute('data-status','error');
    out.className='bad'; out.textContent='request failed: '+e;});
}
function show(doc){
  document.getElementById('title').textContent=doc.info.title+' (version '+doc.info.version+')';
  document.getElementById('desc').textContent=doc.info.description||'';
  var ops=document.getElementById('ops'); ops.textContent='';
  var buttons={};
  Object.keys(doc.paths).sort().forEach(function(path){
    var item=doc.paths[path];
    Object.keys(item).forEach(function(method){
      var op=item[method], div=document.createElement('div'); div.className='op';
      div.id=method+' '+path;
      var h=document.createElement('div');
      h.innerHTML='<span class="m"></span><code></code> — <span></span>';
      h.children[0].textContent=method; h.children[1].textContent=path;
      h.children[2].textContent=op.summary||''; div.appendChild(h);
      if(op.description){var p=document.createElement('p'); p.textContent=op.description;
        div.appendChild(p);}
      var body=op.requestBody&&op.requestBody.content['application/json'], area=null;
      if(body){var schema=deref(doc,body.schema,0);
        var d=document.createElement('details'), sm=document.createElement('summary');
        sm.textContent='request body schema'; d.appendChild(sm);
        var pre=document.createElement('pre'); pre.className='schema';
        pre.textContent=JSON.stringify(schema,null,1); d.appendChild(pre); div.appendChild(d);
        area=document.createElement('textarea'); area.rows=6;
        area.value=JSON.stringify(body.example!==undefined?body.example:sample(schema,0));
        div.appendChild(area);}
      var b=document.createElement('button'); b.textContent='Send';
      var out=document.createElement('pre'); out.className='result';
      b.onclick=function(){send(method,path,area,out)}; buttons[method+' '+path]=b;
      div.appendChild(b); div.appendChild(out);
      Object.keys(op.responses||{}).forEach(function(code){
        var r=document.createElement('div');
        r.innerHTML='<span class="code"></span><span></span>';
        r.children[0].textContent=code; r.children[1].textContent=op.responses[code].description;
        div.appendChild(r);});
      ops.appendChild(div);});});
  // #send=post%20/v1/rank: a link that opens the page and sends that operation's example
  var m=location.hash.match(/send=([^&]+)/);
  if(m&&buttons[decodeURIComponent(m[1])]) buttons[decodeURIComponent(m[1])].click();
}
function load(){
  var m=location.hash.match(/token=([^&]+)/);
  if(m) sessionStorage.setItem('streamrec-token',decodeURIComponent(m[1]));
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
