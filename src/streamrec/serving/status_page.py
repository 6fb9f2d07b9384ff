"""The status page at GET / — what a person looks at: one self-contained HTML page.

It polls GET /v1/status (JSON, under --token like every data endpoint) every two seconds and
draws tiles (versions, freshness, QPS, latency, cache, degraded state, last reload, training
health, compute allocation's λ and level mix, model variants) and an SVG chart of the last
ten minutes' latency p50/p99 and QPS. No CDN, no build step: it works offline. With --token
it asks for the token once (kept in the tab's sessionStorage, shared with /docs);
`/#token=…` hands it over without a prompt.
"""

STATUS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>streamrec server</title>
<meta name="viewport" content="width=device-width,initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.2em auto;max-width:72em;color:#222;padding:0 1em}
h1{font-size:1.3em;margin:.2em 0}.sub{color:#666;margin-bottom:1em}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(13em,1fr));gap:.6em}
.tile{border:1px solid #ddd;border-radius:6px;padding:.5em .8em}
.tile .k{color:#666;font-size:.85em}
.tile .v{font-size:1.35em;font-weight:600;overflow-wrap:anywhere}
.bad{background:#fff1f0;border-color:#f5a3a3}.ok{background:#f3fbf3}
table{border-collapse:collapse;margin-top:.4em}td,th{padding:.15em .8em .15em 0;text-align:left}
#chart{width:100%;height:240px;border:1px solid #ddd;border-radius:6px;margin-top:.8em}
.legend span{margin-right:1.2em}.sw{display:inline-block;width:1.5em;height:3px;
vertical-align:middle;margin-right:.3em}
#error{color:#b00;font-weight:600}
</style></head><body>
<h1>streamrec — <span id="model">…</span></h1>
<div class="sub">serving version <b id="serving-version">…</b> · updated
<span id="updated">never</span> <span id="error"></span></div>
<div class="tiles" id="tiles"></div>
<svg id="chart" data-points="0" viewBox="0 0 1000 240" preserveAspectRatio="none"></svg>
<div class="legend"><span><i class="sw" style="background:#1f77b4"></i>latency p50 (ms)</span>
<span><i class="sw" style="background:#d62728"></i>latency p99 (ms)</span>
<span><i class="sw" style="background:#999"></i>requests/s (right scale)</span>
<span id="chart-range"></span></div>
<h3>Degraded</h3><div id="degraded">—</div>
<h3>Compute levels of /v1/recommend (with --slo-ms)</h3><div id="allocation">—</div>
<h3>Model variants (with --variant)</h3><table id="variants"></table>
<h3>Training health (from the last delta)</h3><div id="health">—</div>
<h3>Last reload</h3><div id="reload">—</div>
<h3>Responses by status</h3><table id="responses"></table>
<script>
var SVG='http://www.w3.org/2000/svg';
function fmt(x,unit,digits){
  if(x===null||x===undefined||isNaN(x)) return '—';
  return (+x).toFixed(digits===undefined?1:digits)+(unit||'');
}
function human(v){
  // a version "1765045923123.4" is the model's training time (ms) and the deltas applied since
  if(v===null||v===undefined) return '—';
  var parts=String(v).split('.'), ms=+parts[0];
  if(!(ms>1e12)) return String(v);
  var t=new Date(ms).toISOString().replace('T',' ').slice(0,19)+' UTC';
  return parts.length>1?t+' + delta '+parts[1]:t;
}
function ago(t){ if(!t) return '—'; return fmt(Date.now()/1000-t,' s ago',0); }
function tile(key,value,cls){
  var d=document.createElement('div'); d.className='tile '+(cls||'');
  var k=document.createElement('div'); k.className='k'; k.textContent=key;
  var v=document.createElement('div'); v.className='v'; v.textContent=value;
  d.appendChild(k); d.appendChild(v); return d;
}
function line(svg,pts,color,width,dots){
  if(pts.length<1) return;
  var p=document.createElementNS(SVG,'polyline');
  p.setAttribute('points',
    pts.map(function(q){return q[0].toFixed(1)+','+q[1].toFixed(1)}).join(' '));
  p.setAttribute('fill','none'); p.setAttribute('stroke',color);
  p.setAttribute('stroke-width',width||2); p.setAttribute('vector-effect','non-scaling-stroke');
  svg.appendChild(p);
  if(dots) pts.forEach(function(q){var c=document.createElementNS(SVG,'circle');
    c.setAttribute('cx',q[0].toFixed(1)); c.setAttribute('cy',q[1].toFixed(1));
    c.setAttribute('r',3); c.setAttribute('fill',color); svg.appendChild(c);});
}
function label(svg,x,y,text,anchor){
  var t=document.createElementNS(SVG,'text'); t.setAttribute('x',x); t.setAttribute('y',y);
  t.setAttribute('font-size','11'); t.setAttribute('fill','#666');
  t.setAttribute('text-anchor',anchor||'start'); t.textContent=text; svg.appendChild(t);
}
function chart(series){
  var svg=document.getElementById('chart'); while(svg.firstChild) svg.removeChild(svg.firstChild);
  var busy=series.filter(function(p){return p.requests>0});
  svg.setAttribute('data-points',String(busy.length));
  if(!series.length){return;}
  var t0=series[0].t, t1=series[series.length-1].t, span=Math.max(t1-t0,1);
  var lat=Math.max.apply(null,busy.map(function(p){return p.p99_ms}).concat([1]));
  var qps=Math.max.apply(null,series.map(function(p){return p.qps}).concat([1]));
  var X=function(t){return 40+(t-t0)/span*900}, Y=function(v,m){return 225-v/m*205};
  for(var i=0;i<=4;i++){var y=20+i*205/4, g=document.createElementNS(SVG,'line');
    g.setAttribute('x1',40);g.setAttribute('x2',940);g.setAttribute('y1',y);g.setAttribute('y2',y);
    g.setAttribute('stroke','#eee'); svg.appendChild(g);
    label(svg,36,y+4,fmt(lat*(4-i)/4,'',1),'end'); label(svg,944,y+4,fmt(qps*(4-i)/4,'',1));}
  line(svg,series.map(function(p){return [X(p.t),Y(p.qps,qps)]}),'#999',1.5);
  line(svg,busy.map(function(p){return [X(p.t),Y(p.p50_ms,lat)]}),'#1f77b4',2,true);
  line(svg,busy.map(function(p){return [X(p.t),Y(p.p99_ms,lat)]}),'#d62728',2,true);
  document.getElementById('chart-range').textContent='last '+fmt(span/60,' min',1);
}
function list(id,items,render){
  var el=document.getElementById(id); el.textContent='';
  if(!items||!items.length){el.textContent='none'; return;}
  var ul=document.createElement('ul');
  items.forEach(function(x){var li=document.createElement('li'); li.textContent=render(x);
    ul.appendChild(li);}); el.appendChild(ul);
}
function show(s){
  document.getElementById('model').textContent=s.model;
  var sv=document.getElementById('serving-version');
  sv.textContent=human(s.versions.serving); sv.setAttribute('data-version',s.versions.serving);
  document.getElementById('updated').textContent=new Date().toLocaleTimeString();
  document.getElementById('error').textContent='';
  var f=s.freshness, r=s.traffic.last_minute, tiles=document.getElementById('tiles');
  tiles.textContent='';
  tiles.appendChild(tile('status',s.status,s.status==='ok'?'ok':'bad'));
  tiles.appendChild(tile('model trained · deltas',human(s.versions.model)+' · '+s.versions.delta));
  if(s.versions.retrieval!==undefined)
    tiles.appendChild(tile('retrieval version',human(s.versions.retrieval)));
  if(s.versions.preranking!==undefined)
    tiles.appendChild(tile('pre-ranking version',human(s.versions.preranking)));
  tiles.appendChild(tile('event → served',fmt(f.event_to_served_s,' s',2)));
  tiles.appendChild(tile('delta lag',fmt(f.delta_lag_s,' s',2)));
  tiles.appendChild(tile('last delta applied',ago(f.last_delta_applied_at)));
  tiles.appendChild(tile('requests/s (1 min)',fmt(r.qps,'',1)));
  tiles.appendChild(tile('latency p50 · p99',fmt(r.p50_ms,'',1)+' · '+fmt(r.p99_ms,' ms',1)));
  tiles.appendChild(tile('cache hit rate',fmt(100*s.cache.hit_rate,' %',1)));
  tiles.appendChild(tile('queued rows',String(s.queue_rows)));
  tiles.appendChild(tile('deltas applied · quarantined',
    s.deltas.applied+' · '+s.deltas.quarantined,s.deltas.quarantined?'bad':''));
  tiles.appendChild(tile('uptime',fmt(s.uptime_s/60,' min',1)));
  var a=s.compute_allocation;
  if(a){
    tiles.appendChild(tile('compute price λ',fmt(a.lambda,'',2)+(a.saturated?' (saturated)':''),
      a.lambda>0?'bad':'ok'));
    tiles.appendChild(tile('arrivals · capacity',
      fmt(a.arrival_qps,'',0)+' · '+fmt(a.capacity_qps,' /s',0)));
    tiles.appendChild(tile('recommend p99 + lag · target',
      fmt(a.observed_ms,'',1)+' · '+fmt(a.setpoint_ms,' ms',0)));
  }
  list('allocation',a?a.levels:[],function(l){return l.name+': '+
    fmt(100*l.recent_share,' %',0)+' of the last 10 s ('+l.requests+' since start)'});
  var vt=document.getElementById('variants'); vt.textContent='';
  if(!s.variants){var none=document.createElement('tr');
    none.innerHTML='<td>one model, every request (no --variant)</td>'; vt.appendChild(none);}
  else{
    var vh=document.createElement('tr');
    vh.innerHTML='<th>variant</th><th>version</th><th>role</th><th>share</th><th>served</th>'+
      '<th>clicks</th><th>failures</th><th>state</th>';
    vt.appendChild(vh);
    s.variants.variants.forEach(function(v){var tr=document.createElement('tr');
      var st=v.role==='shadow'?('mean |Δscore| '+fmt(v.shadow_mean_abs_diff,'',4)):
        (v.in_rotation?'in rotation':'OUT: '+v.out_reason);
      [v.name,human(v.version),v.role,fmt(100*v.share,' %',1),v.served,v.clicks,v.failures,st]
        .forEach(function(x){var td=document.createElement('td'); td.textContent=x;
          tr.appendChild(td);});
      if(!v.in_rotation&&v.role!=='shadow') tr.className='bad';
      vt.appendChild(tr);});
  }
  chart(s.traffic.series);
  list('degraded',s.degraded,function(x){return x});
  list('health',s.training_health,function(h){return h.rule+': '+h.message});
  var rl=s.last_reload;
  document.getElementById('reload').textContent=rl?('model '+rl.model_version+' '+ago(rl.started)+
    ' — load '+fmt(rl.load_s,' s',2)+', warm-up '+fmt(rl.warmup_s,' s',2)+', swap '+
    fmt(rl.swap_s,' s',3)+', free '+fmt(rl.free_s,' s',3)):'none since start';
  var tb=document.getElementById('responses'); tb.textContent='';
  var head=document.createElement('tr');
  head.innerHTML='<th>endpoint</th><th>status</th><th>count</th>';
  tb.appendChild(head);
  s.responses.forEach(function(x){var tr=document.createElement('tr');
    [x.endpoint,x.status,x.count].forEach(function(v){var td=document.createElement('td');
      td.textContent=v; tr.appendChild(td);}); tb.appendChild(tr);});
}
function token(){
  var m=location.hash.match(/token=([^&]+)/);
  if(m){sessionStorage.setItem('streamrec-token',decodeURIComponent(m[1]));
    history.replaceState(null,'',location.pathname);}
  return sessionStorage.getItem('streamrec-token');
}
var asked=false;
function load(){
  var t=token();
  fetch('/v1/status',{headers:t?{Authorization:'Bearer '+t}:{}}).then(function(r){
    if(r.status===401){
      if(!asked){asked=true; var given=prompt('This server needs its --token:');
        if(given){sessionStorage.setItem('streamrec-token',given); return load();}}
      throw 'the server wants its --token (reload the page to enter it)';}
    if(!r.ok) throw 'HTTP '+r.status;
    return r.json().then(show);
  }).catch(function(e){
    document.getElementById('error').textContent='· cannot load /v1/status: '+e;});
}
load(); setInterval(load,2000);
</script></body></html>
"""
