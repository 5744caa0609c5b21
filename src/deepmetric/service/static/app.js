// The web page of `deepmetric serve`: enrol from photos, identify/verify a photo with face boxes, browse
// and delete identities. Plain DOM + fetch against the JSON API; no build step, no external requests.
"use strict";

const $ = (id) => document.getElementById(id);
const keyInput = $("api-key");
keyInput.value = localStorage.getItem("deepmetric-api-key") || "";
keyInput.addEventListener("change", () => {
  localStorage.setItem("deepmetric-api-key", keyInput.value);
  refreshIdentities();
});

function headers() {
  return keyInput.value ? { "X-API-Key": keyInput.value } : {};
}

function say(id, text, kind) {
  const element = $(id);
  element.textContent = text;
  element.className = "message " + (kind || "");
}

async function api(path, options) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options && options.headers) } });
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) {
    throw new Error((body && body.reason) || `${response.status} ${response.statusText}`);
  }
  return body;
}

function text(tag, content, className) {
  const element = document.createElement(tag);
  element.textContent = content;
  if (className) element.className = className;
  return element;
}

async function refreshHealth() {
  try {
    const health = await api("/api/health");
    const threshold = health.threshold === null ? "none" : health.threshold.toFixed(3);
    $("health").textContent = `${health.model} · ${health.identities} identities · threshold ${threshold}`;
  } catch (error) {
    $("health").textContent = "service unreachable: " + error.message;
  }
}

async function refreshIdentities() {
  try {
    const page = await api("/api/identities?limit=1000");
    $("identity-count").textContent = `(${page.total})`;
    const rows = $("identity-rows");
    rows.replaceChildren();
    const select = $("verify-identity");
    const chosen = select.value;
    select.replaceChildren(text("option", "who is it? (identify, all faces)"));
    select.firstChild.value = "";
    for (const [position, identity] of page.identities.entries()) {
      const row = document.createElement("tr");
      row.dataset.identity = identity.identity_id;
      const thumb = document.createElement("td");
      if (position < 50) fetchThumbnail(identity.identity_id, thumb);  // two requests each: only the first rows
      row.append(thumb, text("td", identity.identity_id), text("td", identity.name),
                 text("td", String(identity.num_templates)),
                 text("td", new Date(identity.created_at * 1000).toLocaleString()));
      const actions = document.createElement("td");
      const remove = text("button", "Delete", "danger");
      remove.dataset.delete = identity.identity_id;
      remove.addEventListener("click", () => deleteIdentity(identity.identity_id));
      actions.append(remove);
      row.append(actions);
      rows.append(row);
      const option = text("option", `verify: is it ${identity.name} (${identity.identity_id})?`);
      option.value = identity.identity_id;
      select.append(option);
    }
    select.value = chosen;
    if (page.total > page.identities.length) say("browse-message", `showing the first ${page.identities.length}`);
  } catch (error) {
    say("browse-message", error.message, "error");
  }
  refreshHealth();
}

async function fetchThumbnail(identityId, cell) {
  try {
    const identity = await api(`/api/identities/${encodeURIComponent(identityId)}`);
    const withImage = (identity.templates || []).find((t) => t.has_image);
    if (!withImage) return;
    const response = await fetch(
      `/api/identities/${encodeURIComponent(identityId)}/templates/${withImage.template_id}/image`,
      { headers: headers() });
    if (!response.ok) return;
    const image = document.createElement("img");
    image.alt = identityId;
    image.src = URL.createObjectURL(await response.blob());
    cell.append(image);
  } catch (error) {
    // a missing thumbnail is not worth an error message
  }
}

async function deleteIdentity(identityId) {
  if (!confirm(`Delete ${identityId} and all of their photos?`)) return;
  try {
    await api(`/api/identities/${encodeURIComponent(identityId)}`, { method: "DELETE" });
    say("browse-message", `deleted ${identityId}`, "ok");
  } catch (error) {
    say("browse-message", error.message, "error");
  }
  refreshIdentities();
}

$("enroll-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData();
  form.append("identity_id", $("enroll-id").value.trim());
  if ($("enroll-name").value.trim()) form.append("name", $("enroll-name").value.trim());
  for (const file of $("enroll-images").files) form.append("images", file);
  if ($("enroll-face").value) form.append("face", $("enroll-face").value);
  say("enroll-message", "enrolling…");
  try {
    const identity = await api("/api/identities", { method: "POST", body: form });
    const seen = (identity.faces_seen || []).filter((count) => count !== null);
    const faces = seen.length ? `; faces seen per photo: ${seen.join(", ")}` : "";
    say("enroll-message", `enrolled ${identity.name} (${identity.identity_id}) from ${identity.num_templates} photo(s)${faces}`, "ok");
    $("enroll-form").reset();
  } catch (error) {
    say("enroll-message", error.message, "error");
  }
  refreshIdentities();
});

function drawFaces(file, result) {
  const canvas = $("probe-canvas");
  const image = new Image();
  image.onload = () => {
    // The server applied EXIF orientation; the browser does too for <img>, so sizes agree.
    canvas.width = result.width;
    canvas.height = result.height;
    const context = canvas.getContext("2d");
    context.drawImage(image, 0, 0, result.width, result.height);
    const scale = Math.max(2, result.width / 250);
    context.lineWidth = scale;
    context.font = `${Math.round(7 * scale)}px system-ui, sans-serif`;
    for (const face of result.faces) {
      const [left, top, right, bottom] = face.box;
      const decision = face.decision;
      const accepted = decision && decision.accepted;
      context.strokeStyle = accepted ? "#1f7a3a" : "#b3261e";
      context.strokeRect(left, top, right - left, bottom - top);
      const label = decision ? (accepted ? decision.matches[0]?.name || decision.identity_id : "unknown") : "";
      if (label) {
        const width = context.measureText(label).width + 2 * scale;
        const x = Math.max(0, Math.min(left, result.width - width));  // keep the label inside the picture
        context.fillStyle = context.strokeStyle;
        context.fillRect(x, Math.max(0, top - 9 * scale), width, 9 * scale);
        context.fillStyle = "#fff";
        context.fillText(label, x + scale, Math.max(7 * scale, top - 2 * scale));
      }
    }
    canvas.style.display = "block";
    URL.revokeObjectURL(image.src);
  };
  image.src = URL.createObjectURL(file);
}

function describeDecision(decision, heading) {
  const block = document.createElement("div");
  block.className = "decision";
  const verdict = decision.accepted ? `match: ${decision.identity_id}` : (heading.startsWith("verify") ? "not a match" : "unknown person");
  const title = text("p", `${heading} — `);
  title.append(text("span", verdict, decision.accepted ? "accepted" : "rejected"));
  const score = decision.score === null ? "–" : decision.score.toFixed(3);
  const margin = decision.margin === null ? "–" : decision.margin.toFixed(3);
  title.append(text("span", ` (score ${score}, threshold ${decision.threshold.toFixed(3)}, margin ${margin})`));
  block.append(title);
  const list = document.createElement("ol");
  list.className = "matches";
  const shown = decision.matches.concat(decision.best_other && heading.startsWith("verify") ? [decision.best_other] : []);
  for (const match of shown) {
    const best = match.templates[0];
    list.append(text("li", `${match.name} (${match.identity_id}): ${match.score.toFixed(3)}` +
      (best ? `, best photo ${best.score.toFixed(3)}` : "")));
  }
  block.append(list);
  return block;
}

$("identify-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = $("probe-image").files[0];
  if (!file) return;
  const claimed = $("verify-identity").value;
  const form = new FormData();
  form.append("image", file);
  const results = $("identify-results");
  results.replaceChildren();
  say("identify-message", "checking…");
  try {
    let result;
    if (claimed) {
      form.append("identity_id", claimed);
      result = await api("/api/verify", { method: "POST", body: form });
      result.faces = [{ ...result.face, decision: result.decision }];
      results.append(describeDecision(result.decision, `verify ${claimed}`));
    } else {
      form.append("all_faces", "true");
      form.append("k", "3");
      result = await api("/api/identify", { method: "POST", body: form });
      result.faces.forEach((face, i) => results.append(describeDecision(face.decision, `face ${i + 1}`)));
    }
    say("identify-message", `${result.faces.length} face(s) found`, "ok");
    drawFaces(file, result);
  } catch (error) {
    $("probe-canvas").style.display = "none";
    say("identify-message", error.message, "error");
  }
});

refreshIdentities();
