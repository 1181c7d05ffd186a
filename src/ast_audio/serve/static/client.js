// The page's client-side mode: the model runs here, in the visitor's browser, with onnxruntime-web
// (WebAssembly; vendored under static/vendor/ort/ at build time, nothing from a CDN).
// The model is a waveform-in ONNX file: mono samples at the input contract's rate in, calibrated
// probabilities out; its labels, thresholds and contract are read from the file's own metadata.
// Audio is decoded, resampled and downmixed with WebAudio, and the scores become the labels and
// timeline the service answers with: the same windows, frames and post-processing, in JavaScript.
"use strict";

const RUNTIME = "static/vendor/ort/";

// Python's round(): halves go to the even neighbour (the service turns seconds into frames with it).
function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

// ------------------------------------------------------------------ the model file

// Protobuf fields of bytes[start, end): visit(field, wire, value) with value the number (wire 0)
// or the [start, end) of the bytes (wire 2); fixed-size fields are skipped.
function protoFields(bytes, start, end, visit) {
  let at = start;
  const varint = () => {
    let value = 0, scale = 1, byte;
    do {
      if (at >= end) throw new Error("truncated");
      byte = bytes[at++];
      value += (byte & 0x7f) * scale;
      scale *= 128;
    } while (byte & 0x80);
    return value;
  };
  while (at < end) {
    const key = varint(), field = Math.floor(key / 8), wire = key % 8;
    if (wire === 0) visit(field, wire, varint());
    else if (wire === 2) {
      const length = varint();
      visit(field, wire, [at, at + length]);
      at += length;
    } else if (wire === 1) at += 8;
    else if (wire === 5) at += 4;
    else throw new Error(`wire type ${wire}`);
  }
}

// The metadata_props of an ONNX ModelProto (field 14: key 1, value 2) as an object.
function onnxMetadata(bytes) {
  const text = new TextDecoder(), out = {};
  protoFields(bytes, 0, bytes.length, (field, wire, span) => {
    if (field !== 14 || wire !== 2) return;
    const entry = {};
    protoFields(bytes, span[0], span[1], (f, w, s) => { if (w === 2) entry[f] = text.decode(bytes.subarray(s[0], s[1])); });
    if (entry[1] !== undefined) out[entry[1]] = entry[2] || "";
  });
  return out;
}

function loadRuntime() {
  if (window.ort) return Promise.resolve(window.ort);
  return new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = `${RUNTIME}ort.wasm.min.js`;
    script.onload = () => resolve(window.ort);
    script.onerror = () => reject(new Error(`${RUNTIME}ort.wasm.min.js is missing: the in-browser runtime ` +
      "(onnxruntime-web) is put there at build time by `make vendor`"));
    document.head.append(script);
  });
}

// ------------------------------------------------------------------ windows, frames, events

// [start, end) spans of `window` every `hop` over `length`, the last aligned to the end (windows.window_spans).
function windowSpans(length, window, hop) {
  if (length <= window) return [[0, length]];
  const spans = [];
  for (let s = 0; s < length - window; s += hop) spans.push([s, s + window]);
  spans.push([length - window, length]);
  return spans;
}

// Each column of scores [frames][classes] median-filtered over k (odd) frames, edges repeated.
function medianFilter(scores, k) {
  if (k <= 1 || scores.length === 0) return scores.map((row) => Float64Array.from(row));
  const h = Math.floor(k / 2), n = scores.length, classes = scores[0].length;
  const out = scores.map(() => new Float64Array(classes)), values = new Float64Array(k);
  for (let c = 0; c < classes; c++) {
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < k; j++) values[j] = scores[Math.min(n - 1, Math.max(0, i - h + j))][c];
      values.sort();
      out[i][c] = values[h];
    }
  }
  return out;
}

// Events from frame scores, one row every `hop` seconds, as the service's detect_events: median
// filter, hysteresis (on: the threshold, off: off_ratio of it), gaps under min_gap joined, events
// under min_duration dropped; `ignore`d classes make none.
function detectEvents(scores, hop, duration, labels, on, post, ignore) {
  let k = Math.max(1, roundHalfEven(post.median / hop));
  k = k + 1 - (k % 2);
  const minFrames = roundHalfEven(post.min_duration / hop), gap = roundHalfEven(post.min_gap / hop);
  const smooth = medianFilter(scores, k);
  const spans = [];
  labels.forEach((label, c) => {
    let state = false, start = 0;
    const runs = [];
    smooth.forEach((row, i) => {
      const next = state ? row[c] >= on[c] * post.off_ratio : row[c] >= on[c];
      if (next && !state) start = i;
      if (!next && state) runs.push([start, i]);
      state = next;
    });
    if (state) runs.push([start, smooth.length]);
    const merged = [];
    for (const [a, b] of runs) {
      if (merged.length && a - merged[merged.length - 1][1] < gap) merged[merged.length - 1][1] = b;
      else merged.push([a, b]);
    }
    for (const [a, b] of merged) if (b - a >= minFrames && !ignore.has(c)) spans.push([c, a, b]);
  });
  const events = spans.map(([c, a, b]) => {
    let peak = -Infinity;
    for (let i = a; i < b; i++) peak = Math.max(peak, smooth[i][c]);
    return { label: labels[c], index: c, start: a * hop, end: Math.min(b * hop, duration), peak };
  });
  events.sort((x, y) => x.start - y.start || y.peak - x.peak || x.index - y.index);
  return events;
}

function topLabels(scores, labels, k) {
  const order = [...scores.keys()].sort((a, b) => scores[b] - scores[a] || a - b);
  return order.slice(0, k).map((i) => ({ label: labels[i], score: scores[i] }));
}

// ------------------------------------------------------------------ the model

class ClientModel {
  // `settings`: the page's client-side settings (the model file's address, the timeline's defaults).
  static async load(settings) {
    const ort = await loadRuntime();
    // threads: onnxruntime-web's own choice, half the cores (at most 4) where the page is cross-origin
    // isolated (serve --client-side sends the headers), else one
    ort.env.wasm.proxy = false;
    ort.env.wasm.wasmPaths = new URL(RUNTIME, document.baseURI).href;
    const response = await fetch(settings.model);
    if (!response.ok) throw new Error(`${settings.model}: ${response.status} ${response.statusText}`);
    const bytes = new Uint8Array(await response.arrayBuffer());
    let meta = null;
    try {
      meta = JSON.parse(onnxMetadata(bytes).ast_audio || "null");
    } catch (e) {
      meta = null;
    }
    if (!meta || meta.input !== "waveform" || !Array.isArray(meta.labels) || !(meta.input_contract || meta.contract)) {
      throw new Error(`${settings.model}: not a waveform-in ONNX model of ast-audio (no "ast_audio" metadata ` +
        'with input "waveform")');
    }
    const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
    return new ClientModel(ort, session, meta, settings);
  }

  constructor(ort, session, meta, settings) {
    const c = meta.input_contract || meta.contract; // the input contract (InputContract.to_dict())
    this.ort = ort;
    this.session = session;
    this.settings = settings;
    this.labels = meta.labels;
    this.thresholds = meta.thresholds || null;
    this.rate = c.sample_rate;
    this.threads = ort.env.wasm.numThreads; // settled by the runtime when the session was made
    // samples of one model input: a Kaldi window plus target_length - 1 shifts (InputContract.samples)
    const size = Math.trunc(c.sample_rate * c.frame_length * 0.001);
    const shift = Math.trunc(c.sample_rate * c.frame_shift * 0.001);
    this.window = size + (c.target_length - 1) * shift;
  }

  // A file's audio as mono samples at the model's rate: decoded by WebAudio in an OfflineAudioContext
  // at that rate (which resamples it), channels averaged (the contract's "mean" policy).
  async decode(blob) {
    const context = new OfflineAudioContext(1, 1, this.rate);
    const audio = await context.decodeAudioData(await blob.arrayBuffer());
    if (audio.numberOfChannels === 1) return audio.getChannelData(0);
    const out = new Float32Array(audio.length);
    for (let c = 0; c < audio.numberOfChannels; c++) {
      const channel = audio.getChannelData(c);
      for (let i = 0; i < out.length; i++) out[i] += channel[i];
    }
    for (let i = 0; i < out.length; i++) out[i] /= audio.numberOfChannels;
    return out;
  }

  // Probabilities of samples[a, b) as one model input (the graph pads or cuts it to the model's length).
  async run(samples, a, b) {
    const input = new this.ort.Tensor("float32", samples.slice(a, b), [1, b - a]);
    const out = await this.session.run({ waveform: input });
    return Float64Array.from(out.probabilities.data);
  }

  // The clip's scores as the service's predict: model windows half a window apart, max over them.
  async predict(samples, scored = new Map(), onWindow = () => {}) {
    const n = Math.max(1, samples.length), scores = new Float64Array(this.labels.length).fill(-Infinity);
    for (const [a, b] of windowSpans(n, this.window, Math.max(1, Math.floor(this.window / 2)))) {
      const row = await this.scoreSpan(samples, a, b, scored);
      row.forEach((s, i) => { scores[i] = Math.max(scores[i], s); });
      onWindow();
    }
    return scores;
  }

  async scoreSpan(samples, a, b, scored) {
    const key = `${a}:${b}`;
    if (!scored.has(key)) scored.set(key, await this.run(samples, a, b));
    return scored.get(key);
  }

  // The clip's top labels and its timeline: a frame every `hop` seconds, each scored by the model
  // window centred on it (cut at the ends: FrameGrid with the model's length as the window), then
  // the service's post-processing with the model's calibrated thresholds (else 0.5). A span met
  // twice is scored once. onLabels(labels) as soon as the clip's windows are scored (before the
  // frames, which take longer), onProgress(done, total) after each window.
  async tag(samples, { onLabels = () => {}, onProgress = () => {} } = {}) {
    const n = samples.length, rate = this.rate, s = this.settings;
    const hop = Math.max(1, roundHalfEven(s.hop * rate)), W = this.window;
    const frames = Math.max(1, Math.ceil(n / hop));
    const spans = [];
    for (let i = 0; i < frames; i++) {
      const a = i * hop + Math.floor(hop / 2) - Math.floor(W / 2);
      spans.push([Math.max(0, a), Math.max(1, Math.min(n, a + W))]);
    }
    const clip = windowSpans(Math.max(1, n), W, Math.max(1, Math.floor(W / 2)));
    const total = new Set([...spans, ...clip].map(([a, b]) => `${a}:${b}`)).size;
    const scored = new Map(), progress = () => onProgress(scored.size, total);
    const scores = await this.predict(samples, scored, progress);
    const labels = topLabels(scores, this.labels, 5);
    onLabels(labels);
    const rows = [];
    for (const [a, b] of spans) {
      rows.push(await this.scoreSpan(samples, a, b, scored));
      progress();
    }
    const duration = n / rate, step = s.hop; // seconds, as the service counts frames
    const on = this.labels.map((_, c) => (this.thresholds ? this.thresholds[c] : 0.5));
    const ignore = new Set(this.labels.map((l, c) => (l.trim().toLowerCase() === "background" ? c : -1)));
    const windows = rows.map((row, i) => ({ start: i * step, end: Math.min((i + 1) * step, duration),
      labels: topLabels(row, this.labels, 5) }));
    return {
      duration,
      scores,
      labels,
      windows,
      events: detectEvents(rows, step, duration, this.labels, on, s, ignore),
    };
  }
}
