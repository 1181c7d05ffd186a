// The ast-audio page: tag a file or a recording, or stream the microphone live.
// Plain JavaScript, no build step, nothing loaded from elsewhere: it works offline.
// Client-side mode (the ast-audio-client meta filled in, see serve/web.py): files and recordings
// are tagged in this browser by client.js's ClientModel, with no request to the service.
"use strict";

const $ = (id) => document.getElementById(id);
const clientMeta = document.querySelector('meta[name="ast-audio-client"]');
const clientSettings = clientMeta && clientMeta.content ? JSON.parse(clientMeta.content) : null;
let client = null;    // client-side mode: a promise of the ClientModel (bench/webpage.py times it)
let info = null;      // GET api/info
let mic = null;       // the open microphone: {stream, ctx, proc}
let recorded = null;  // Float32Array chunks while recording
let socket = null;    // the live WebSocket

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

function setStatus(text) { $("status").textContent = text; }

function detail(body, response) {
  const d = body && body.detail;
  if (typeof d === "string") return d;
  if (Array.isArray(d)) return d.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("; ");
  return response.statusText || "request failed";
}

async function loadInfo() {
  try {
    const r = await fetch("api/info");
    info = await r.json();
    $("model").textContent = `${info.checkpoints.join(" + ")} · ${info.labels.length} labels · ` +
      `${info.sample_rate} Hz · ${info.window_seconds} s windows · ${info.device} ${info.precision}`;
  } catch (e) {
    showError(`cannot reach the service: ${e.message}`);
  }
}

async function loadHere() {
  $("live").hidden = true; // live mode streams to the service; client-side, audio stays here
  $("attention-on").parentElement.hidden = true;
  $("footer").textContent = "The model runs in this browser (onnxruntime-web, WebAssembly): audio does not leave it.";
  $("model").textContent = "loading the model into this browser…";
  client = ClientModel.load(clientSettings);
  try {
    const m = await client;
    $("model").textContent = `${clientSettings.model} · ${m.labels.length} labels · ${m.rate} Hz · ` +
      `${Number((m.window / m.rate).toFixed(3))} s windows · in this browser (WebAssembly, ` +
      `${m.threads} thread${m.threads === 1 ? "" : "s"})`;
  } catch (e) {
    $("model").textContent = "the model could not be loaded";
    showError(e.message);
  }
}

// ------------------------------------------------------------------ results

function renderLabels(labels) {
  const rows = (labels || []).map(({ label, score }) => {
    const row = document.createElement("div");
    row.className = "row";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = label;
    name.title = label;
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.width = `${Math.max(0, Math.min(1, score)) * 100}%`;
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "score";
    value.textContent = score.toFixed(3);
    value.dataset.score = String(score);
    row.append(name, bar, value);
    return row;
  });
  $("labels").replaceChildren(...rows);
}

function renderTimeline(body) {
  const events = body.events || [];
  $("timeline-box").hidden = (body.windows || []).length < 2;
  const lanes = new Map();
  for (const e of events) {
    if (!lanes.has(e.label)) {
      const lane = document.createElement("div");
      lane.className = "lane";
      lanes.set(e.label, lane);
    }
    const bar = document.createElement("div");
    bar.className = "event";
    bar.style.left = `${(100 * e.start) / body.duration}%`;
    bar.style.width = `${(100 * (e.end - e.start)) / body.duration}%`;
    bar.textContent = e.label;
    bar.title = `${e.label} ${e.start.toFixed(2)}–${e.end.toFixed(2)} s (peak ${e.peak.toFixed(2)})`;
    lanes.get(e.label).append(bar);
  }
  $("timeline").replaceChildren(...lanes.values());
  $("events").replaceChildren(...events.map((e) => {
    const li = document.createElement("li");
    li.textContent = `${e.label}: ${e.start.toFixed(2)}–${e.end.toFixed(2)} s (peak ${e.peak.toFixed(2)})`;
    return li;
  }));
}

function drawSamples(samples) {
  const canvas = $("wave");
  canvas.width = canvas.clientWidth * (window.devicePixelRatio || 1);
  const g = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  g.clearRect(0, 0, w, h);
  g.fillStyle = "#2f6fde";
  const step = Math.max(1, Math.floor(samples.length / w));
  for (let x = 0; x < w; x++) {
    let lo = 0, hi = 0;
    for (let i = x * step; i < Math.min(samples.length, (x + 1) * step); i++) {
      lo = Math.min(lo, samples[i]);
      hi = Math.max(hi, samples[i]);
    }
    g.fillRect(x, (h / 2) * (1 - hi), 1, Math.max(1, (h / 2) * (hi - lo)));
  }
}

async function drawFile(blob) {
  try {
    const ctx = new AudioContext();
    const audio = await ctx.decodeAudioData(await blob.arrayBuffer());
    ctx.close();
    drawSamples(audio.getChannelData(0));
  } catch (e) {
    drawSamples(new Float32Array(0)); // the browser cannot decode it; the service may still
  }
}

// ------------------------------------------------------------------ tagging a file

async function tag(blob, name) {
  showError("");
  $("live-box").hidden = true;
  $("attention").hidden = true;
  setStatus(`tagging ${name}…`);
  drawFile(blob);
  if (client) {
    await tagHere(blob, name);
    return;
  }
  const form = new FormData();
  form.append("file", blob, name);
  const query = new URLSearchParams({ top_k: "5", timeline: "true" }); // frames and events: the service's defaults, predict --timeline's
  let response, body;
  try {
    response = await fetch(`api/predict?${query}`, { method: "POST", body: form });
    body = await response.json().catch(() => null);
  } catch (e) {
    setStatus("");
    showError(`${name}: the upload failed (${e.message})`);
    return;
  }
  if (!response.ok) {
    setStatus("");
    showError(`${response.status}: ${detail(body, response)}`);
    return;
  }
  showTagged(name, body);
  if ($("attention-on").checked) await showAttention(blob, name);
}

function showTagged(name, body) {
  renderLabels(body.labels);
  renderTimeline(body);
  setStatus(`${name}: ${body.duration.toFixed(2)} s, ${body.windows.length} frame(s), ${body.events.length} event(s)`);
}

// Client-side: decoded, resampled and scored here; the same labels and timeline as the service's.
async function tagHere(blob, name) {
  let model, samples, body;
  try {
    model = await client;
  } catch (e) {
    setStatus("");
    showError(e.message);
    return;
  }
  try {
    samples = await model.decode(blob);
  } catch (e) {
    setStatus("");
    showError(`${name}: this browser cannot decode it (${e.message})`);
    return;
  }
  if (!samples.length) {
    setStatus("");
    showError(`${name}: no audio samples`);
    return;
  }
  try {
    body = await model.tag(samples, {
      onLabels: renderLabels,
      onProgress: (done, total) => setStatus(`tagging ${name} in this browser… ${done}/${total} windows`),
    });
  } catch (e) {
    setStatus("");
    showError(`${name}: ${e.message}`);
    return;
  }
  showTagged(name, body);
}

async function showAttention(blob, name) {
  const form = new FormData();
  form.append("file", blob, name);
  try {
    const response = await fetch("api/attention", { method: "POST", body: form });
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      showError(`attention map: ${response.status}: ${detail(body, response)}`);
      return;
    }
    const image = $("attention");
    if (image.src) URL.revokeObjectURL(image.src);
    image.src = URL.createObjectURL(await response.blob());
    image.hidden = false;
  } catch (e) {
    showError(`attention map: ${e.message}`);
  }
}

// ------------------------------------------------------------------ the microphone

async function openMic(onSamples) {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  const ctx = new AudioContext();
  await ctx.resume();
  const source = ctx.createMediaStreamSource(stream);
  const proc = ctx.createScriptProcessor(4096, 1, 1);
  proc.onaudioprocess = (e) => onSamples(new Float32Array(e.inputBuffer.getChannelData(0)));
  source.connect(proc);
  proc.connect(ctx.destination); // the output stays silent; connected so that it runs
  return { stream, ctx, proc };
}

function closeMic() {
  if (!mic) return;
  mic.proc.disconnect();
  mic.stream.getTracks().forEach((t) => t.stop());
  mic.ctx.close();
  mic = null;
}

function wav(chunks, rate) {
  const n = chunks.reduce((a, c) => a + c.length, 0);
  const view = new DataView(new ArrayBuffer(44 + 2 * n));
  const text = (at, s) => [...s].forEach((ch, i) => view.setUint8(at + i, ch.charCodeAt(0)));
  text(0, "RIFF"); view.setUint32(4, 36 + 2 * n, true); text(8, "WAVE"); text(12, "fmt ");
  view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, 2 * rate, true); view.setUint16(32, 2, true);
  view.setUint16(34, 16, true); text(36, "data"); view.setUint32(40, 2 * n, true);
  let at = 44;
  for (const c of chunks) for (const s of c) { view.setInt16(at, Math.max(-1, Math.min(1, s)) * 32767, true); at += 2; }
  return new Blob([view], { type: "audio/wav" });
}

function pcm16(samples) {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) out[i] = Math.max(-1, Math.min(1, samples[i])) * 32767;
  return out.buffer;
}

async function toggleRecord() {
  const button = $("record");
  if (recorded) {
    const chunks = recorded, rate = mic.ctx.sampleRate;
    recorded = null;
    closeMic();
    button.textContent = "● Record";
    button.classList.remove("on");
    await tag(wav(chunks, rate), "recording.wav");
    return;
  }
  if (mic) return; // live mode holds the microphone
  showError("");
  try {
    recorded = [];
    mic = await openMic((s) => { if (recorded) recorded.push(s); });
  } catch (e) {
    recorded = null;
    showError(`no microphone: ${e.message}`);
    return;
  }
  button.textContent = "■ Stop and tag";
  button.classList.add("on");
  setStatus("recording…");
}

// ------------------------------------------------------------------ live mode

function liveEvent(msg) {
  const list = $("live-events");
  const id = `live-${msg.label}`;
  let li = [...list.children].find((x) => x.dataset.key === id && x.classList.contains("active"));
  if (msg.state === "start") {
    li = document.createElement("li");
    li.dataset.key = id;
    li.className = "active";
    li.textContent = `${msg.label}: started at ${msg.start.toFixed(2)} s`;
    list.prepend(li);
  } else if (li) {
    li.className = "";
    li.textContent = `${msg.label}: ${msg.start.toFixed(2)}–${msg.end.toFixed(2)} s (peak ${msg.peak.toFixed(2)})`;
  }
}

function stopLive() {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send("end");
  closeMic();
  $("live").textContent = "Live";
  $("live").classList.remove("on");
}

async function toggleLive() {
  if (socket && socket.readyState <= WebSocket.OPEN) { stopLive(); return; }
  if (mic) return; // recording holds the microphone
  showError("");
  let recent = new Float32Array(0);
  try {
    mic = await openMic((samples) => {
      const joined = new Float32Array(recent.length + samples.length);
      joined.set(recent); joined.set(samples, recent.length);
      recent = joined.slice(-(mic ? mic.ctx.sampleRate : 48000) * 2);
      drawSamples(recent);
      if (socket && socket.readyState === WebSocket.OPEN) socket.send(pcm16(samples));
    });
  } catch (e) {
    showError(`no microphone: ${e.message}`);
    return;
  }
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const query = new URLSearchParams({ sample_rate: String(mic.ctx.sampleRate), hop: "0.5", top_k: "5" });
  socket = new WebSocket(`${scheme}://${location.host}/api/stream?${query}`);
  socket.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (msg.type === "scores") { renderLabels(msg.labels); setStatus(`live: ${msg.end.toFixed(1)} s`); }
    else if (msg.type === "event") liveEvent(msg);
    else if (msg.type === "error") showError(msg.message);
  };
  socket.onerror = () => showError("the live connection failed");
  socket.onclose = () => { closeMic(); $("live").textContent = "Live"; $("live").classList.remove("on"); };
  $("live-box").hidden = false;
  $("timeline-box").hidden = true;
  $("live-events").replaceChildren();
  $("live").textContent = "■ Stop live";
  $("live").classList.add("on");
  setStatus("live: listening…");
}

// ------------------------------------------------------------------ wiring

const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  const file = e.dataTransfer.files[0];
  if (file) tag(file, file.name);
});
$("file").addEventListener("change", (e) => {
  const file = e.target.files[0];
  if (file) tag(file, file.name);
  e.target.value = "";
});
$("record").addEventListener("click", toggleRecord);
$("live").addEventListener("click", toggleLive);
window.addEventListener("error", (e) => showError(`page error: ${e.message}`));
window.addEventListener("unhandledrejection", (e) => showError(`page error: ${e.reason}`));
if (clientSettings) loadHere();
else loadInfo();
