// What the page says about how far a result can be trusted: the reasons to abstain in plain words, the
// prediction set and the notice for models without an out-of-distribution check. Every key of the answer
// may be missing (a server older than the reliability fields): then nothing is flagged and the notice shows.
"use strict";

const REASON_WORDS = {
  not_greyscale: "a colour image, not a greyscale radiograph",
  too_small: "an image too small for the model to read reliably",
  likely_inverted: "an image that looks inverted: the middle of the chest is darker than the lungs, as in a raw negative",
  not_frontal_chest: "not recognisable as a frontal chest radiograph: two lungs, one either side, were not found",
  empty_set: "no class is plausible at the set's coverage",
};

const CHECK_WORDS = {
  not_greyscale: "whether the image is greyscale",
  too_small: "whether the image is large enough",
  likely_inverted: "whether the image is inverted",
  not_frontal_chest: "whether this is a frontal chest radiograph",
};

function formatScore(x) {
  return Math.abs(x) >= 1000 ? x.toFixed(0) : x.toPrecision(3);
}

function percent(coverage) {
  return typeof coverage === "number" && coverage > 0 && coverage < 1 ? `${Math.round(100 * coverage)}%` : null;
}

function setText(members) {
  return `{${members.join(", ")}}`;
}

function listOf(value) {
  return Array.isArray(value) ? value.filter((item) => typeof item === "string") : [];
}

function oodReason(ood) {
  const known = ood && typeof ood.score === "number" && typeof ood.threshold === "number";
  const numbers = known ? ` (OOD score ${formatScore(ood.score)} above threshold ${formatScore(ood.threshold)})` : "";
  return `unlike the images the model was trained on${numbers}`;
}

function reasonText(code, result, coverage) {
  if (code === "ood") return oodReason(result.ood);
  if (code === "ambiguous_set") {
    return `the model cannot narrow it to one class: ${setText(listOf(result.prediction_set))}`;
  }
  if (code === "empty_set" && percent(coverage)) {
    return `no class is plausible at the set's ${percent(coverage)} coverage`;
  }
  return REASON_WORDS[code] || `the server's reason “${code}”`;
}

// The reasons to abstain, in words; the server's list, else the gate's and the OOD flag.
function abstainReasons(result, coverage) {
  let codes = listOf(result.abstain_reasons);
  if (!codes.length) {
    codes = listOf(result.gate && result.gate.reasons);
    if (result.ood && result.ood.flagged === true) codes.push("ood");
  }
  const words = codes.map((code) => reasonText(code, result, coverage));
  return words.length ? words : ["the server gave no reason"];
}

function predictionSetLine(result, coverage) {
  if (!Array.isArray(result.prediction_set)) return "";
  const at = percent(coverage) ? ` at ${percent(coverage)} coverage` : "";
  return `Prediction set${at}: ${setText(listOf(result.prediction_set))}`;
}

function hasOodCheck(result) {
  const ood = result.ood;
  return Boolean(ood) && typeof ood === "object" && !ood.note && typeof ood.flagged === "boolean";
}

// What this model cannot tell about the image, or "" when it has both checks.
function missingChecks(result) {
  const noOod = !hasOodCheck(result);
  const noSet = !Array.isArray(result.prediction_set);
  const lines = [];
  if (noOod) lines.push("This model has no out-of-distribution check; results on unfamiliar images are not flagged.");
  if (noSet) lines.push(`${noOod ? "Nor does it" : "This model does not"} give a prediction set, only probabilities.`);
  return lines.join(" ");
}

function uncheckedLine(result) {
  const codes = listOf(result.gate && result.gate.unavailable);
  if (!codes.length) return "";
  return `Not checked on this image: ${codes.map((code) => CHECK_WORDS[code] || code).join("; ")}.`;
}
