// The clinician page: send one image to /explain, show the class probabilities and the Grad-CAM overlay,
// or, when the model abstains, say so instead (reliability.js words the reasons).
"use strict";

const $ = (id) => document.getElementById(id);
const ANYWAY = "Show the probabilities anyway (research only)";
let lastFile = null; // re-sent when the API key is entered after a 401
let coverage = null; // the target coverage of the model's prediction sets, from /healthz's model card

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function headers() {
  const key = $("api-key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

async function loadInfo() {
  try {
    const response = await fetch("/healthz");
    const info = await response.json();
    $("model-info").textContent =
      `Model “${info.model}” — classes: ${info.classes.join(", ")} (${info.intended_use}).`;
    $("key-row").hidden = !info.auth_required;
    showCard(info.model_card);
  } catch (err) {
    $("model-info").textContent = "The server did not answer; is it running?";
  }
}

function showCard(card) {
  if (!card) return;
  coverage = typeof card.conformal_coverage === "number" ? card.conformal_coverage : null;
  $("card-use").textContent = card.intended_use;
  $("card-data").textContent = card.training_data;
  const metrics = Object.entries(card.metrics || {}).map(([k, v]) => `${k} ${v.toFixed(3)}`);
  $("card-metrics").textContent = metrics.length ? metrics.join(", ") : "none recorded in the bundle";
  $("card-run").textContent = [card.run, card.created].filter(Boolean).join(", ") || "—";
}

function clearResult() {
  $("results").hidden = true;
  $("bars").replaceChildren();
  $("original").removeAttribute("src");
  $("overlay").removeAttribute("src");
  $("file-name").textContent = "";
  $("cam-class").textContent = "";
  $("target-line").textContent = "";
  $("abstain").hidden = true;
  $("abstain-reasons").replaceChildren();
  $("show-anyway").hidden = true;
  $("no-check").hidden = true;
  $("prediction-set").textContent = "";
  $("unchecked").textContent = "";
  showAnswer(true);
}

// Show or hide what reads as a result: the bars, the prediction set and the heat map.
function showAnswer(visible) {
  $("answer").hidden = !visible;
  $("overlay-figure").hidden = !visible;
  $("show-anyway").setAttribute("aria-expanded", String(visible));
  $("show-anyway").textContent = visible ? "Hide the probabilities" : ANYWAY;
}

function showReliability(result) {
  const abstain = result.abstain === true;
  const items = abstain ? abstainReasons(result, coverage) : [];
  $("abstain-reasons").replaceChildren(...items.map((text) => {
    const item = document.createElement("li");
    item.textContent = text;
    return item;
  }));
  $("abstain").hidden = !abstain;
  $("show-anyway").hidden = !abstain;
  $("answer").classList.toggle("anyway", abstain);
  $("anyway-note").hidden = !abstain;
  showAnswer(!abstain);
  $("prediction-set").textContent = predictionSetLine(result, coverage);
  $("no-check").textContent = missingChecks(result);
  $("no-check").hidden = !$("no-check").textContent;
  $("unchecked").textContent = uncheckedLine(result);
}

function showBars(probabilities, predicted) {
  const bars = $("bars");
  bars.replaceChildren();
  for (const [name, p] of Object.entries(probabilities)) {
    const row = document.createElement("div");
    row.className = "bar-row" + (name === predicted ? " top" : "");
    row.setAttribute("role", "listitem");
    const label = document.createElement("span");
    label.className = "bar-label";
    label.textContent = name;
    label.title = name;
    const track = document.createElement("div");
    track.className = "bar-track";
    track.setAttribute("role", "meter");
    track.setAttribute("aria-label", name);
    track.setAttribute("aria-valuemin", "0");
    track.setAttribute("aria-valuemax", "100");
    track.setAttribute("aria-valuenow", (100 * p).toFixed(1));
    const fill = document.createElement("div");
    fill.className = "bar-fill";
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = `${(100 * p).toFixed(1)} %`;
    row.append(label, track, value);
    bars.append(row);
  }
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return body.error || `HTTP ${response.status}`;
  } catch (err) {
    return `HTTP ${response.status}`;
  }
}

async function analyse(file) {
  if (!file) return;
  lastFile = file;
  clearResult(); // never leave the previous image's result under a new file's name or error
  setStatus(`Analysing ${file.name}…`);
  const form = new FormData();
  form.append("file", file, file.name);
  let response;
  try {
    response = await fetch("/explain", { method: "POST", body: form, headers: headers() });
  } catch (err) {
    setStatus("The server could not be reached.", true);
    return;
  }
  if (!response.ok) {
    const message = await errorMessage(response);
    if (response.status === 401) {
      $("key-row").hidden = false;
      $("api-key").focus();
      setStatus(`Could not analyse ${file.name}: ${message}. Enter the key and press Enter.`, true);
      return;
    }
    setStatus(`Could not analyse ${file.name}: ${message}`, true);
    return;
  }
  const result = await response.json();
  $("file-name").textContent = file.name;
  showBars(result.probabilities, result.predicted);
  $("original").src = `data:image/png;base64,${result.image_png}`;
  $("overlay").src = `data:image/png;base64,${result.overlay_png}`;
  $("cam-class").textContent = result.target_class;
  $("target-line").textContent =
    `Most probable: ${result.predicted}. Heat map method: ${result.method}. Research use only.`;
  showReliability(result);
  $("results").hidden = false;
  setStatus(`Done: ${file.name}.`);
}

function setUpControls() {
  const zone = $("drop-zone");
  const stop = (event) => { event.preventDefault(); event.stopPropagation(); };
  ["dragenter", "dragover"].forEach((name) => zone.addEventListener(name, (event) => {
    stop(event);
    zone.classList.add("dragging");
  }));
  ["dragleave", "drop"].forEach((name) => zone.addEventListener(name, (event) => {
    stop(event);
    zone.classList.remove("dragging");
  }));
  zone.addEventListener("drop", (event) => analyse(event.dataTransfer.files[0]));
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); $("file-input").click(); }
  });
  $("file-input").addEventListener("change", (event) => {
    analyse(event.target.files[0]);
    event.target.value = ""; // choosing the same file again fires "change" again
  });
  $("show-anyway").addEventListener("click", () => {
    showAnswer($("show-anyway").getAttribute("aria-expanded") !== "true");
  });
  $("api-key").addEventListener("keydown", (event) => {
    if (event.key === "Enter") { event.preventDefault(); analyse(lastFile); }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setUpControls();
  loadInfo();
});
