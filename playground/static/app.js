// The playground page: reads the form, calls the playground's own API (never the endpoints), and
// renders results with textContent only (messages come from remote servers).
"use strict";

const $ = (id) => document.getElementById(id);
let config = null;
let busy = false;

function element(tag, attributes = {}, text) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function showMessage(text) {
  $("message").textContent = text;
  $("message").hidden = !text;
}

function setStatus(text) {
  $("status").textContent = text;
}

function ms(value) {
  return value === null || value === undefined ? "–" : Math.round(value).toLocaleString("en-US");
}

// POST JSON to the playground; always resolves to {ok, data} or {ok: false, error}.
async function post(path, body) {
  let response;
  try {
    response = await fetch(path, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
  } catch (error) {
    return { ok: false, error: "The playground server did not answer: is it still running?" };
  }
  let data = null;
  try {
    data = await response.json();
  } catch (error) {
    return { ok: false, error: `The playground answered HTTP ${response.status} without a readable body.` };
  }
  if (!response.ok) {
    return { ok: false, error: (data && data.error) || `The playground answered HTTP ${response.status}.` };
  }
  return { ok: true, data };
}

function mode() {
  return $("mode-router").checked ? "router" : "compare";
}

function readForm() {
  const number = (id) => Number($(id).value);
  return {
    prompt: $("prompt").value,
    negative_prompt: $("negative").value,
    steps: number("steps"),
    width: number("width"),
    height: number("height"),
    guidance: number("guidance"),
    seed: number("seed"),
  };
}

// Checks a person can fix before anything is sent; the server checks again.
function formProblem(form) {
  if (!form.prompt.trim()) return "Enter a prompt: it is empty.";
  for (const [name, value] of Object.entries({ steps: form.steps, width: form.width, height: form.height, seed: form.seed })) {
    if (!Number.isInteger(value) || value < 0) return `${name} must be a whole number.`;
  }
  if (!Number.isFinite(form.guidance)) return "guidance must be a number.";
  return null;
}

function renderCompare(results) {
  const container = $("results");
  container.replaceChildren();
  for (const result of results) {
    const card = element("article", { class: "card", "data-endpoint": result.endpoint });
    card.append(element("h2", {}, result.endpoint));
    if (result.ok) {
      const image = element("img", { class: "result-image", alt: `image from ${result.endpoint}` });
      image.src = result.image;
      card.append(image);
    } else {
      card.classList.add("failed");
      card.append(element("p", { class: "error" }, result.error));
    }
    const facts = element("dl");
    const device = result.device ? (result.device_name ? `${result.device} (${result.device_name})` : result.device) : "–";
    for (const [label, value, cls] of [
      ["latency", result.latency_ms === null ? "–" : `${ms(result.latency_ms)} ms`, "latency"],
      ["unit", result.unit || "–", "unit"],
      ["device", device, "device"],
    ]) {
      facts.append(element("dt", {}, label), element("dd", { class: cls }, value));
    }
    card.append(facts);
    container.append(card);
  }
}

function histogram(latencies, bins = 10) {
  const chart = $("histogram");
  chart.replaceChildren();
  if (!latencies.length) return;
  const low = Math.min(...latencies);
  const high = Math.max(...latencies);
  const width = (high - low) / bins || 1;
  const counts = new Array(bins).fill(0);
  for (const value of latencies) counts[Math.min(bins - 1, Math.floor((value - low) / width))] += 1;
  const tallest = Math.max(...counts);
  counts.forEach((count, index) => {
    const bar = element("div", { class: "bin", title: `${ms(low + index * width)}–${ms(low + (index + 1) * width)} ms: ${count}` });
    const fill = element("div", { class: "fill" });
    fill.style.height = `${(count / tallest) * 100}%`;
    bar.append(element("span", { class: "count" }, count ? String(count) : ""), fill,
      element("span", { class: "edge" }, ms(low + index * width)));
    chart.append(bar);
  });
}

function renderRouter(data) {
  $("router-results").hidden = false;
  const latency = data.latency || {};
  $("router-summary").textContent =
    `${data.succeeded} of ${data.requests} requests to ${data.endpoint} succeeded (${data.concurrency} in flight); ` +
    `latency p50 ${ms(latency.p50)} ms, p90 ${ms(latency.p90)} ms, max ${ms(latency.max)} ms.`;
  const body = $("unit-table").tBodies[0];
  body.replaceChildren();
  for (const unit of data.units) {
    const row = element("tr", { "data-unit": unit.unit });
    for (const value of [unit.unit, unit.device, String(unit.count), `${Math.round(unit.share * 100)}%`,
      ms(unit.p50), ms(unit.p90), ms(unit.p99), ms(unit.max)]) {
      row.append(element("td", {}, value));
    }
    const sample = element("td");
    if (data.samples[unit.unit]) {
      const image = element("img", { class: "sample", alt: `sample from ${unit.unit}` });
      image.src = data.samples[unit.unit];
      sample.append(image);
    }
    row.append(sample);
    body.append(row);
  }
  const errors = $("router-errors");
  errors.replaceChildren();
  for (const error of data.errors) errors.append(element("li", { class: "error" }, `${error.count} × ${error.error}`));
  histogram(data.results.filter((r) => r.ok).map((r) => r.latency_ms));
  const requests = $("request-table").tBodies[0];
  requests.replaceChildren();
  for (const result of data.results) {
    const row = element("tr");
    for (const value of [String(result.index), result.unit || "–", result.device || "–", ms(result.latency_ms),
      result.ok ? "ok" : result.error]) {
      row.append(element("td", {}, value));
    }
    requests.append(row);
  }
}

async function submit(event) {
  event.preventDefault();
  if (busy) return;
  showMessage("");
  const form = readForm();
  const problem = formProblem(form);
  if (problem) {
    showMessage(problem);
    return;
  }
  busy = true;
  document.body.classList.add("busy");
  try {
    if (mode() === "compare") {
      const endpoints = [...document.querySelectorAll("#endpoint-list input:checked")].map((box) => box.value);
      if (!endpoints.length) {
        showMessage("Pick at least one endpoint.");
        return;
      }
      setStatus(`Generating on ${endpoints.length} endpoint(s)…`);
      const answer = await post("api/generate", { ...form, endpoints });
      if (!answer.ok) {
        showMessage(answer.error);
        setStatus("");
        return;
      }
      renderCompare(answer.data.results);
      const failed = answer.data.results.filter((r) => !r.ok).length;
      setStatus(failed ? `Done: ${failed} endpoint(s) failed, see their cards.` : "Done.");
    } else {
      const requests = Number($("requests").value);
      const concurrency = Number($("concurrency").value);
      setStatus(`Sending ${requests} request(s) to ${$("router-endpoint").value}…`);
      const answer = await post("api/router", { ...form, endpoint: $("router-endpoint").value, requests, concurrency });
      if (!answer.ok) {
        showMessage(answer.error);
        setStatus("");
        return;
      }
      renderRouter(answer.data);
      setStatus("Done.");
    }
  } finally {
    busy = false;
    document.body.classList.remove("busy");
  }
}

function switchMode() {
  const router = mode() === "router";
  $("compare-options").hidden = router;
  $("router-options").hidden = !router;
  $("results").hidden = router;
  $("router-results").hidden = !router || !$("unit-table").tBodies[0].rows.length;
  showMessage("");
}

async function start() {
  try {
    const response = await fetch("api/config");
    config = await response.json();
  } catch (error) {
    showMessage("Could not load the playground's configuration: reload the page.");
    return;
  }
  $("steps").value = config.defaults.steps;
  $("width").value = config.defaults.size;
  $("height").value = config.defaults.size;
  $("guidance").value = config.defaults.guidance;
  $("requests").max = config.limits.max_requests;
  $("concurrency").max = config.limits.max_concurrency;
  const list = $("endpoint-list");
  for (const endpoint of config.endpoints) {
    const box = element("input", { type: "checkbox", value: endpoint.name, id: `use-${endpoint.name}` });
    box.checked = true;
    const label = element("label", { for: box.id, title: endpoint.url });
    label.append(box, ` ${endpoint.name}`);
    list.append(label);
    $("router-endpoint").append(element("option", { value: endpoint.name }, `${endpoint.name} (${endpoint.url})`));
  }
  $("form").addEventListener("submit", submit);
  for (const radio of document.querySelectorAll("input[name=mode]")) radio.addEventListener("change", switchMode);
  $("random-seed").addEventListener("click", () => { $("seed").value = Math.floor(Math.random() * 2 ** 31); });
  document.body.dataset.ready = "true";
}

start();
