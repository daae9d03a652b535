// gliomaseg viewer: upload, slice viewer with overlays, measurements, downloads.
// Plain JavaScript, no dependencies, so the page works offline. User-supplied text
// (file names, server messages) is only ever set with textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const ALLOWED = [".zip", ".tif", ".tiff", ".png", ".nii", ".nii.gz"];
const state = { result: null, index: 0, limits: null, preload: [] };

const fmt = {
  int: (n) => Number(n).toLocaleString("en-US"),
  num: (x, d) => Number(x).toLocaleString("en-US", { minimumFractionDigits: d, maximumFractionDigits: d }),
  mb: (bytes) => `${Math.round(bytes / 1048576)} MB`,
};

function setStatus(text, progress) {
  $("status").hidden = !text;
  $("status-text").textContent = text || "";
  const bar = $("bar-fill");
  bar.classList.toggle("indeterminate", progress === null);
  bar.style.width = progress === null || progress === undefined ? "" : `${Math.round(progress * 100)}%`;
}

function showError(message) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
}

function detailOf(body, status) {
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.detail)) {
    return body.detail.map((d) => `${(d.loc || []).slice(-1)[0]}: ${d.msg}`).join("; ");
  }
  if (status === 413) return "The file is too large.";
  return `The server answered with an error (HTTP ${status}).`;
}

function extensionOf(name) {
  const lower = name.toLowerCase();
  if (lower.endsWith(".nii.gz")) return ".nii.gz";
  const dot = lower.lastIndexOf(".");
  return dot < 0 ? "" : lower.slice(dot);
}

function checkFile(file) {
  const ext = extensionOf(file.name);
  if (!ALLOWED.includes(ext)) {
    return `Wrong file type (${ext || "no extension"}). Upload one slice (.tif or .png), a .zip of one patient folder, or a NIfTI volume (.nii.gz).`;
  }
  if (file.size === 0) return "The file is empty.";
  if (state.limits && file.size > state.limits.max_bytes) {
    return `The file is too large (${fmt.mb(file.size)}): the limit is ${fmt.mb(state.limits.max_bytes)}.`;
  }
  return null;
}

function spacingQuery() {
  const params = new URLSearchParams();
  for (const [id, key] of [["pixel-mm", "pixel_mm"], ["slice-mm", "slice_mm"]]) {
    const v = parseFloat($(id).value);
    if (Number.isFinite(v) && v > 0) params.set(key, String(v));
  }
  return params;
}

function upload(file) {
  showError(null);
  const problem = checkFile(file);
  if (problem) { showError(problem); return; }
  const params = spacingQuery();
  params.set("filename", file.name);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", `/api/uploads?${params}`);
  xhr.setRequestHeader("Content-Type", "application/octet-stream");
  xhr.responseType = "json";
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) setStatus(`Uploading ${file.name}…`, e.loaded / e.total);
  };
  xhr.upload.onload = () => setStatus("Segmenting on the CPU… this can take a little while.", null);
  xhr.onerror = () => { setStatus(null); showError("Cannot reach the server. Is 'gliomaseg serve' still running?"); };
  xhr.onload = () => {
    setStatus(null);
    if (xhr.status === 201 && xhr.response) {
      showResult(xhr.response);
    } else {
      showError(detailOf(xhr.response, xhr.status));
    }
  };
  setStatus(`Uploading ${file.name}…`, 0);
  xhr.send(file);
}

function volumeText(r) {
  let text = `${fmt.int(r.volume_voxels)} voxels`;
  if (r.volume_mm3 !== null) text += ` · ${fmt.num(r.volume_mm3 / 1000, 2)} cm³`;
  return text;
}

function diceText(value, hasTruth) {
  if (!hasTruth) return "— (no masks uploaded)";
  if (value === null || value === undefined) return "undefined (no tumour in either)";
  return fmt.num(value, 3);
}

function showResult(r) {
  const old = state.result;
  if (old && old.id !== r.id) fetch(`/api/results/${old.id}`, { method: "DELETE" }).catch(() => {});
  state.result = r;
  $("case").textContent = r.case;
  $("volume").textContent = volumeText(r);
  $("tumour-count").textContent = `${r.tumour_slices.length} of ${r.slices}`;
  $("dice").textContent = diceText(r.dice, r.has_truth);
  $("seconds").textContent = `${fmt.num(r.seconds, 2)} s`;
  $("dl-masks").href = r.links.masks;
  $("dl-nifti").href = r.links.nifti;
  const notes = $("notes");
  notes.replaceChildren(...r.notes.map((n) => Object.assign(document.createElement("li"), { textContent: n })));
  for (const id of ["numbers-card", "downloads", "stack", "legend", "slice-badge"]) $(id).hidden = false;
  $("empty").hidden = true;
  $("truth-toggle").hidden = !r.has_truth;
  $("legend-truth").hidden = !r.has_truth;
  $("strip-truth-key").hidden = !r.has_truth;
  $("stack").style.aspectRatio = `${r.shape[1]} / ${r.shape[0]}`;
  const slider = $("slider");
  slider.max = String(r.slices - 1);
  slider.disabled = false;
  buildStrip(r);
  // Start on the slice with the largest predicted tumour: the most informative view.
  const largest = r.area_px.indexOf(Math.max(...r.area_px));
  show(r.volume_voxels > 0 ? largest : Math.floor(r.slices / 2));
  preload(r);
}

function buildStrip(r) {
  const tumour = new Set(r.tumour_slices);
  const truth = new Set(r.truth_slices || []);
  const cells = [];
  for (let i = 0; i < r.slices; i++) {
    const cell = document.createElement("div");
    cell.className = "cell" + (tumour.has(i) ? " t" : "") + (truth.has(i) ? " g" : "");
    cell.dataset.index = String(i);
    cell.title = `slice ${r.slice_numbers[i]}: ${fmt.int(r.area_px[i])} px predicted`;
    cell.addEventListener("click", () => show(i));
    cells.push(cell);
  }
  $("strip").replaceChildren(...cells);
}

function preload(r) {
  // Fetch every slice once in the background so that the slider moves instantly.
  state.preload = [];
  for (let i = 0; i < r.slices; i++) {
    for (const url of [sliceUrl(r, i), predUrl(r, i)]) {
      const img = new Image();
      img.src = url;
      state.preload.push(img);
    }
  }
}

const sliceUrl = (r, i) => `/api/results/${r.id}/slices/${i}.png?channel=${$("channel").value}`;
const predUrl = (r, i) => `/api/results/${r.id}/prediction/${i}.png`;
const truthUrl = (r, i) => `/api/results/${r.id}/truth/${i}.png`;

function show(i) {
  const r = state.result;
  if (!r) return;
  i = Math.max(0, Math.min(r.slices - 1, i));
  state.index = i;
  $("slider").value = String(i);
  $("img-slice").src = sliceUrl(r, i);
  $("img-pred").src = predUrl(r, i);
  if (r.has_truth) $("img-truth").src = truthUrl(r, i);
  const label = `Slice ${i + 1} / ${r.slices} (file #${r.slice_numbers[i]})`;
  $("slice-label").textContent = label;
  $("slice-badge").textContent = label;
  let area = `${fmt.int(r.area_px[i])} px`;
  if (r.area_mm2) area += ` · ${fmt.num(r.area_mm2[i], 1)} mm²`;
  $("slice-area").textContent = area;
  $("slice-dice").textContent = diceText(r.slice_dice ? r.slice_dice[i] : null, r.has_truth);
  for (const cell of $("strip").children) cell.classList.toggle("current", cell.dataset.index === String(i));
  applyLayers();
}

function applyLayers() {
  const pred = $("img-pred");
  pred.style.opacity = String(Number($("opacity").value) / 100);
  pred.hidden = !$("show-pred").checked;
  $("img-truth").hidden = !(state.result && state.result.has_truth && $("show-truth").checked);
}

async function loadLimits() {
  try {
    const limits = await (await fetch("/api/limits")).json();
    state.limits = limits;
    $("limits").textContent = `Limits: ${fmt.mb(limits.max_bytes)} per file, ${limits.max_files} files and ` +
      `${fmt.mb(limits.max_uncompressed)} unpacked per zip, ${limits.max_side} px per side. ` +
      `Results are deleted after ${Math.round(limits.result_ttl / 60)} min.`;
    const health = await (await fetch("/health")).json();
    const m = health.model;
    $("model-info").textContent = `${m.backend} · ${m.channels} · ${m.size} px grid` +
      (m.context ? ` · 2.5D ±${m.context}` : "") + (m.networks > 1 ? ` · ensemble of ${m.networks}` : "");
  } catch (e) {
    showError("Cannot reach the server. Is 'gliomaseg serve' still running?");
  }
}

function wire() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => {
    if (e.target.files.length) upload(e.target.files[0]);
    e.target.value = "";
  });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });
  for (const type of ["dragenter", "dragover"]) {
    document.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) drop.classList.remove("over"); });
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const files = e.dataTransfer ? e.dataTransfer.files : [];
    if (files.length > 1) showError("Drop one file: a slice, one zip of a patient folder, or one NIfTI volume.");
    else if (files.length === 1) upload(files[0]);
  });
  $("slider").addEventListener("input", (e) => show(Number(e.target.value)));
  $("prev").addEventListener("click", () => show(state.index - 1));
  $("next").addEventListener("click", () => show(state.index + 1));
  for (const id of ["opacity", "show-pred", "show-truth"]) $(id).addEventListener("input", applyLayers);
  $("channel").addEventListener("change", () => { show(state.index); if (state.result) preload(state.result); });
  document.addEventListener("keydown", (e) => {
    const tag = e.target.tagName;
    if (!state.result || e.target === $("slider") || tag === "SELECT" ||
        (tag === "INPUT" && e.target.type !== "checkbox")) return;
    const step = { ArrowRight: 1, ArrowUp: 1, ArrowLeft: -1, ArrowDown: -1 }[e.key];
    if (step) { e.preventDefault(); show(state.index + step); }
  });
}

wire();
loadLimits();
