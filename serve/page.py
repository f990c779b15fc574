"""The web page at GET /: pick or drop a photo, see it beside its Monet-style painting."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Monet-style painter</title>
<style>
 body{font-family:system-ui,sans-serif;max-width:760px;margin:2rem auto;color:#222}
 #drop{border:2px dashed #888;border-radius:8px;padding:2rem;text-align:center;cursor:pointer}
 #drop.over{background:#eef}
 .row{display:flex;gap:1rem;margin-top:1rem} figure{margin:0;flex:1}
 img{width:100%;border-radius:4px;background:#eee;min-height:2rem} #status{margin-top:1rem;color:#a00}
</style></head><body>
<h1>Photo &rarr; Monet</h1>
<div id="drop">Drop a photo here, or <label><u>choose one</u>
 <input id="file" type="file" accept="image/jpeg,image/png,image/webp" hidden></label></div>
<div class="row">
 <figure><img id="original" alt="original"><figcaption>Your photo</figcaption></figure>
 <figure><img id="painting" alt="painting"><figcaption>As a painting</figcaption></figure>
</div>
<div id="status" role="status"></div>
<script>
const drop = document.getElementById('drop'), file = document.getElementById('file');
const status = document.getElementById('status');
async function send(f) {
  document.getElementById('original').src = URL.createObjectURL(f);
  status.textContent = 'Painting...';
  const body = new FormData(); body.append('file', f);
  const r = await fetch('stylize', {method: 'POST', body});
  if (!r.ok) { const e = await r.json().catch(() => ({error: r.statusText})); status.textContent = e.error; return; }
  const out = document.getElementById('painting');
  out.onload = () => { status.textContent = ''; out.dataset.ready = '1'; };
  out.src = URL.createObjectURL(await r.blob());
}
file.onchange = () => file.files[0] && send(file.files[0]);
drop.ondragover = e => { e.preventDefault(); drop.classList.add('over'); };
drop.ondragleave = () => drop.classList.remove('over');
drop.ondrop = e => { e.preventDefault(); drop.classList.remove('over'); e.dataTransfer.files[0] && send(e.dataTransfer.files[0]); };
</script></body></html>
"""
