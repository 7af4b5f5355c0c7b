"""The page `showtell serve` shows at /: drop or pick images, see their captions."""

PAGE = """<!doctype html>
<html lang="en"><meta charset="utf-8"><title>showtell</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font-family:system-ui,sans-serif;margin:2em;max-width:60em}
 #drop{border:2px dashed #888;border-radius:8px;padding:2em;text-align:center;cursor:pointer}
 #drop.over{background:#eef}
 .result{display:flex;gap:1em;margin:1em 0;align-items:flex-start}
 .result img{width:160px;image-rendering:pixelated;border:1px solid #ccc}
 .error{color:#b00}
</style>
<h1>showtell</h1>
<p>Drop images here, or pick them: each gets the model's captions.</p>
<div id="drop">Drop images or click to choose
 <input id="pick" type="file" accept="image/*" multiple hidden></div>
<div id="results"></div>
<script>
const drop = document.getElementById("drop"), pick = document.getElementById("pick");
const out = document.getElementById("results");
drop.onclick = () => pick.click();
pick.onchange = () => send(pick.files);
drop.ondragover = e => { e.preventDefault(); drop.classList.add("over"); };
drop.ondragleave = () => drop.classList.remove("over");
drop.ondrop = e => {
  e.preventDefault(); drop.classList.remove("over"); send(e.dataTransfer.files);
};
async function send(files) {
  const form = new FormData();
  for (const f of files) form.append("images", f);
  const response = await fetch("/v1/captions", {method: "POST", body: form});
  const body = await response.json();
  if (!response.ok) { out.insertAdjacentHTML("afterbegin", `<p class=error></p>`);
    out.firstChild.textContent = body.error || response.statusText; return; }
  body.results.forEach((r, i) => {
    const div = document.createElement("div"); div.className = "result";
    const img = document.createElement("img"); img.src = URL.createObjectURL(files[i]);
    const text = document.createElement("div");
    const title = document.createElement("b"); title.textContent = r.file; text.append(title);
    if (r.error) { const p = document.createElement("p"); p.className = "error";
      p.textContent = r.error; text.append(p); }
    else { const ol = document.createElement("ol"); ol.start = 0;
      for (const c of r.captions) { const li = document.createElement("li");
        li.className = "caption"; li.textContent = `${c.caption} (p=${c.p.toFixed(6)})`;
        ol.append(li); } text.append(ol); }
    div.append(img, text); out.prepend(div);
  });
}
</script>
</html>
"""
