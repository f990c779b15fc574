"""The web page at GET /: pick or drop a photo, see it beside its Monet-style painting.

Its states, in the page's `data-state`: `empty` (only the drop zone: no image boxes before there is a picture),
`painting` (a waiting box where the painting will be, "Painting..."), `done` (the photo beside its painting) or
`error` (the server's JSON error text, no painting box). The photo itself shows once the browser has decoded it,
so a file that is no image never leaves a broken box.
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Monet-style painter</title>
<style>
 body{font-family:system-ui,sans-serif;max-width:760px;margin:2rem auto;color:#222}
 #drop{border:2px dashed #888;border-radius:8px;padding:2rem;text-align:center;cursor:pointer}
 #drop.over{background:#eef}
 .row{display:flex;gap:1rem;margin-top:1rem} figure{margin:0;flex:1}
 img{width:100%;border-radius:4px;display:block}
 #wait{aspect-ratio:1;border-radius:4px;background:repeating-linear-gradient(45deg,#eee,#eee 10px,#f6f6f6 10px,#f6f6f6 20px);
       display:flex;align-items:center;justify-content:center;color:#666}
 #status{margin-top:1rem} .error #status{color:#a00}
 [hidden]{display:none !important}
</style></head><body data-state="empty">
<h1>Photo &rarr; Monet</h1>
<div id="drop">Drop a photo here, or <label><u>choose one</u>
 <input id="file" type="file" accept="image/jpeg,image/png,image/webp" hidden></label></div>
<div class="row">
 <figure id="photo-fig" hidden><img id="original" alt="your photo"><figcaption>Your photo</figcaption></figure>
 <figure id="painting-fig" hidden><div id="wait">Painting&hellip;</div><img id="painting" alt="the painting" hidden>
  <figcaption>As a painting</figcaption></figure>
</div>
<div id="status" role="status" aria-live="polite"></div>
<script>
const $ = id => document.getElementById(id);
const drop = $('drop'), file = $('file'), status = $('status'), painting = $('painting'), original = $('original');
function show(state, message) {
  document.body.dataset.state = state;
  document.body.className = state;
  $('painting-fig').hidden = !['painting', 'done'].includes(state);
  $('wait').hidden = state !== 'painting';
  painting.hidden = state !== 'done';
  status.textContent = message || '';
}
original.onload = () => { $('photo-fig').hidden = false; };
original.onerror = () => { $('photo-fig').hidden = true; };
let current = 0;
async function send(f) {
  const request = ++current;  // a newer photo wins over an answer still on its way
  $('photo-fig').hidden = true;
  original.src = URL.createObjectURL(f);
  show('painting', 'Painting\\u2026');
  const body = new FormData(); body.append('file', f);
  let r;
  try { r = await fetch('stylize', {method: 'POST', body}); }
  catch (e) { if (request === current) show('error', 'The server did not answer: ' + e.message); return; }
  if (request !== current) return;
  if (!r.ok) {
    const e = await r.json().catch(() => ({error: r.status + ' ' + r.statusText}));
    show('error', e.error || (r.status + ' ' + r.statusText)); return;
  }
  const blob = await r.blob();
  painting.onload = () => { if (request === current) show('done'); };
  painting.onerror = () => { if (request === current) show('error', 'The painting could not be shown.'); };
  painting.src = URL.createObjectURL(blob);
}
file.onchange = () => file.files[0] && send(file.files[0]);
drop.ondragover = e => { e.preventDefault(); drop.classList.add('over'); };
drop.ondragleave = () => drop.classList.remove('over');
drop.ondrop = e => { e.preventDefault(); drop.classList.remove('over'); e.dataTransfer.files[0] && send(e.dataTransfer.files[0]); };
</script></body></html>
"""
