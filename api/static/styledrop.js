/* Styledrop pages: plain JavaScript over the JSON API (same origin, session cookie + X-CSRF-Token). */
"use strict";

(function () {
  const FINAL = new Set(["succeeded", "failed", "cancelled"]);
  const STATE_WORDS = {
    queued: "Queued", running: "Training", cancelling: "Stopping…", succeeded: "Done",
    failed: "Failed", cancelled: "Cancelled",
  };
  // Error codes the worker or API can report, in words a user understands; anything else shows its message.
  const ERROR_WORDS = {
    too_many_attempts: "Training was interrupted too many times (the worker stopped or restarted) and was given up. Try again later.",
    style_missing: "The style of this job was deleted.",
    bad_image: "The style image could not be read. Upload it again as PNG, JPEG or WebP.",
    model_unavailable: "The service could not load its image model. An operator has to fix this; please try later.",
    training_error: "Training failed because of an error in the service.",
    selection_missing: "An image picked for this round no longer exists. Start the round again with a new selection.",
    clip_unavailable: "An automatic round needs the CLIP scoring model, which the service could not load. Start a round from ticked images instead.",
    csrf_failed: "Your session token is missing or out of date. Reload the page and try again.",
    unauthorized: "You are signed out. Sign in again.",
    rate_limited: "Too many requests. Wait a moment and try again.",
  };

  function $(sel, root) { return (root || document).querySelector(sel); }
  function $all(sel, root) { return Array.from((root || document).querySelectorAll(sel)); }
  function csrfToken() { const m = $('meta[name="csrf-token"]'); return m ? m.content : ""; }

  // Every API error is an RFC 9457 problem: {type, title, status, detail, code, instance[, errors]}.
  function errorText(body, status) {
    if (body && Array.isArray(body.errors) && body.errors.length && body.code === "validation_error") {
      // "body.descriptor" -> "descriptor": the user knows the form, not the request's parts
      const where = (field) => String(field || "").replace(/^(body|query|header|path)\.?/, "") || "request";
      return body.errors.map((e) => `${where(e.field)}: ${e.message}`).join("; ");
    }
    if (body && typeof body.detail === "string" && body.detail) {
      return ERROR_WORDS[body.code] && body.code !== "bad_image" ? ERROR_WORDS[body.code] : body.detail;
    }
    if (status === 413) return "The file is too large.";
    return `The request failed (HTTP ${status}).`;
  }

  async function api(method, url, body) {
    const headers = { Accept: "application/json, application/problem+json" };
    if (method !== "GET") headers["X-CSRF-Token"] = csrfToken();
    if (body && !(body instanceof FormData)) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(url, { method, headers, body, credentials: "same-origin" });
    } catch (err) {
      throw new Error("The service cannot be reached. Check your connection and try again.");
    }
    if (resp.status === 204) return null;
    let data = null;
    try { data = await resp.json(); } catch (err) { data = null; }
    if (!resp.ok) {
      const e = new Error(errorText(data, resp.status));
      e.status = resp.status;
      throw e;
    }
    return data;
  }

  // A JSON listing's rows: every listing answers the envelope {"items": [...], "next": url | null}.
  function items(page) { return page.items; }

  function showError(el, message) {
    if (!el) return;
    el.textContent = message || "";
    el.hidden = !message;
  }

  function fmtSeconds(s) {
    if (s === null || s === undefined || !isFinite(s)) return "—";
    s = Math.max(0, Math.round(s));
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${s % 60} s`;
    return `${Math.floor(m / 60)} h ${m % 60} min`;
  }

  function fmtBytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
    return `${(n / 1048576).toFixed(2)} MB`;
  }

  // One time format on every page, the same as the server's (api/routes/pages.py, the `when` filter).
  function fmtTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return isNaN(d) ? "—" : `${d.toISOString().slice(0, 16).replace("T", " ")} UTC`;
  }

  // A Copy button for the text of `source`; without clipboard permission it selects the text for Ctrl+C.
  function copyButton(button, source, done) {
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(source.textContent.trim());
        done.textContent = "Copied.";
      } catch (err) {
        const range = document.createRange();
        range.selectNodeContents(source);
        window.getSelection().removeAllRanges();
        window.getSelection().addRange(range);
        done.textContent = "Selected: press Ctrl+C (⌘C) to copy.";
      }
    });
  }

  // Narrow screens show a table's rows as blocks, each cell labelled with its column's heading (styledrop.css).
  function labelCells(table) {
    const heads = $all("thead th", table).map((th) => th.textContent.trim());
    for (const tr of $all("tbody tr", table)) {
      Array.from(tr.children).forEach((td, n) => { if (heads[n] && td.colSpan === 1) td.dataset.label = heads[n]; });
    }
  }

  // --- one training job: progress bar, ETA, loss curve, previews, error, cancel ---------------------------

  const SVG_NS = "http://www.w3.org/2000/svg";
  // Loss chart geometry in viewBox units (0 0 320 130): the plot box, with room for the axis labels.
  const PLOT = { left: 44, right: 312, top: 8, bottom: 100 };
  const QUEUE_POLL_MS = 2000;

  function svgEl(name, attrs, text) {
    const el = document.createElementNS(SVG_NS, name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function fmtLoss(v) { return Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(3); }

  class JobPanel {
    constructor(el) {
      this.el = el;
      this.id = el.dataset.jobId;
      this.state = el.dataset.state;
      this.total = Number(el.dataset.total) || 1;
      this.queuePosition = Number(el.dataset.queuePosition) || 0;
      this.losses = [];
      this.previewCount = 0;
      this.source = null;
      this.queueTimer = null;
      this.cancelBtn = $('[data-action="cancel-job"]', el);
      this.confirmBox = this.part("confirm-cancel");
      this.cancelBtn.addEventListener("click", () => this.askCancel(true));
      $('[data-action="keep-training"]', el).addEventListener("click", () => this.askCancel(false));
      $('[data-action="confirm-cancel"]', el).addEventListener("click", () => this.cancel());
      this.setState(this.state);
      if (el.dataset.errorCode || el.dataset.errorMessage) {
        this.setError({ code: el.dataset.errorCode, message: el.dataset.errorMessage });
      }
      if (FINAL.has(this.state)) this.loadHistory(); else this.listen();
    }

    part(role) { return $(`[data-role="${role}"]`, this.el); }

    // `queuePosition` undefined keeps the last known one: the SSE replay of the job's first `queued` event
    // must not wipe the position the page was rendered with (it is polled while queued).
    setState(state, queuePosition) {
      this.state = state;
      this.el.dataset.state = state;
      if (queuePosition !== undefined) this.queuePosition = Number(queuePosition) || 0;
      if (state !== "queued") this.queuePosition = 0;
      const badge = this.part("state");
      badge.textContent = STATE_WORDS[state] || state;
      badge.dataset.state = state;
      let detail = "";
      if (state === "queued") {
        detail = this.queuePosition ? `position ${this.queuePosition} in the queue` : "waiting for a worker";
      }
      this.part("detail").textContent = detail;
      const cancellable = !FINAL.has(state) && state !== "cancelling";
      this.cancelBtn.hidden = !cancellable || !this.confirmBox.hidden;
      if (!cancellable) this.confirmBox.hidden = true;
      if (state === "succeeded") this.setProgress(this.total, this.total);
      if (FINAL.has(state)) this.part("eta").textContent = "—";
      if (FINAL.has(state) || state === "queued") this.setPhase(null);
      if (state === "queued" && this.source) this.pollQueue();
    }

    pollQueue() {
      if (this.queueTimer) return;
      const tick = async () => {
        this.queueTimer = null;
        if (this.state !== "queued") return;
        try {
          const job = await api("GET", `/v1/jobs/${this.id}`);
          if (this.state === "queued" && job.state === "queued") this.setState("queued", job.queue_position);
        } catch (err) { /* the stream reports real trouble; a missed poll only delays the position */ }
        if (this.state === "queued") this.queueTimer = setTimeout(tick, QUEUE_POLL_MS);
      };
      this.queueTimer = setTimeout(tick, QUEUE_POLL_MS);
    }

    askCancel(show) {
      this.confirmBox.hidden = !show;
      this.cancelBtn.hidden = show;
      if (show) $('[data-action="keep-training"]', this.el).focus(); else this.cancelBtn.focus();
    }

    setProgress(step, total) {
      if (total) this.total = total;
      const frac = Math.min(1, Math.max(0, step / this.total));
      const bar = this.part("bar");
      bar.value = frac;
      bar.setAttribute("aria-valuetext", `${Math.round(frac * 100)}%, step ${step} of ${this.total}`);
      this.part("pct").textContent = `${Math.round(frac * 100)}%`;
      this.part("step").textContent = String(step);
      this.part("total").textContent = String(this.total);
    }

    // The phase before or after the steps (an automatic round's candidates, the previews); training itself is
    // the Step line, so a `training` phase (or none) hides this line. Words: data-words of _job.html.
    setPhase(p) {
      const line = this.part("phase-line");
      const words = JSON.parse(line.dataset.words || "{}");
      if (!p || !words[p.phase]) { line.hidden = true; return; }
      this.part("phase").textContent = words[p.phase];
      this.part("phase-count").textContent = `${p.done}/${p.total}`;
      this.part("phase-eta").textContent = fmtSeconds(p.eta_seconds);
      line.hidden = false;
    }

    addPicks(picks) {
      const box = this.part("picks");
      box.replaceChildren();
      for (const p of picks || []) {
        const img = document.createElement("img");
        img.src = p.image_url;
        img.alt = `Picked: ${p.prompt}`;
        img.loading = "lazy";
        const fig = document.createElement("figure");
        const cap = document.createElement("figcaption");
        cap.textContent = `picked · score ${Number(p.score).toFixed(3)}: ${p.prompt}`;
        fig.append(img, cap);
        box.append(fig);
      }
      box.hidden = !box.children.length;
    }

    setTook(job) {
      if (!job.finished_at || !job.started_at) return;
      const secs = (new Date(job.finished_at) - new Date(job.started_at)) / 1000;
      const took = this.part("took");
      took.textContent = fmtSeconds(secs);
      took.dataset.seconds = String(secs);
      this.part("took-wrap").hidden = false;
    }

    setError(error) {
      if (!error) { showError(this.part("error"), ""); return; }
      showError(this.part("error"), ERROR_WORDS[error.code] || error.message || "The training failed.");
    }

    addLoss(step, loss) {
      if (typeof loss !== "number" || !isFinite(loss)) return;
      this.losses.push([step, loss]);
      this.part("loss-last").textContent = loss.toFixed(3);
      this.drawLoss();
    }

    // A line chart with labelled axes: steps 0..total along x, the loss range seen so far along y.
    drawLoss() {
      const pts = this.losses;
      if (!pts.length) return;
      const svg = this.part("loss");
      const line = $("polyline", svg);
      let lo = Infinity, hi = -Infinity;
      for (const [, l] of pts) { lo = Math.min(lo, l); hi = Math.max(hi, l); }
      const span = hi - lo || 1;
      const w = PLOT.right - PLOT.left, h = PLOT.bottom - PLOT.top;
      const stride = Math.max(1, Math.ceil(pts.length / 300));
      const out = [];
      for (let i = 0; i < pts.length; i += stride) {
        const [s, l] = pts[i];
        out.push(`${(PLOT.left + (s / this.total) * w).toFixed(1)},${(PLOT.bottom - ((l - lo) / span) * h).toFixed(1)}`);
      }
      line.setAttribute("points", out.join(" "));
      const axes = this.part("axes");
      axes.replaceChildren(
        svgEl("line", { x1: PLOT.left, y1: PLOT.top, x2: PLOT.left, y2: PLOT.bottom }),
        svgEl("line", { x1: PLOT.left, y1: PLOT.bottom, x2: PLOT.right, y2: PLOT.bottom }),
        svgEl("text", { x: PLOT.left - 4, y: PLOT.top + 8, "text-anchor": "end", "data-axis": "y-max" }, fmtLoss(hi)),
        svgEl("text", { x: PLOT.left - 4, y: PLOT.bottom, "text-anchor": "end", "data-axis": "y-min" }, fmtLoss(lo)),
        svgEl("text", { x: 10, y: (PLOT.top + PLOT.bottom) / 2, "text-anchor": "middle",
          transform: `rotate(-90 10 ${(PLOT.top + PLOT.bottom) / 2})` }, "loss"),
        svgEl("text", { x: PLOT.left, y: PLOT.bottom + 14, "text-anchor": "start", "data-axis": "x-min" }, "0"),
        svgEl("text", { x: PLOT.right, y: PLOT.bottom + 14, "text-anchor": "end", "data-axis": "x-max" }, String(this.total)),
        svgEl("text", { x: (PLOT.left + PLOT.right) / 2, y: PLOT.bottom + 26, "text-anchor": "middle" }, "step"),
      );
      const summary = `from ${pts[0][1].toFixed(3)} at step ${pts[0][0]} to ${pts[pts.length - 1][1].toFixed(3)} at step ${pts[pts.length - 1][0]}; lowest ${lo.toFixed(3)}`;
      this.part("loss-summary").textContent = summary;
      svg.setAttribute("aria-label", `Training loss over steps: ${summary}`);
      this.part("loss-figure").hidden = false;
    }

    addPreview(payload) {
      const n = this.previewCount++;
      const img = document.createElement("img");
      img.src = payload.url || `/v1/jobs/${this.id}/previews/${n}`;
      img.alt = `Preview: ${payload.prompt || "sample"}`;
      img.loading = "lazy";
      const fig = document.createElement("figure");
      fig.append(img);
      const cap = document.createElement("figcaption");
      cap.textContent = (payload.step ? `step ${payload.step}: ` : "") + (payload.prompt || "");
      fig.append(cap);
      this.part("previews").append(fig);
    }

    apply(event) {
      const p = event.payload || {};
      if (event.kind === "progress") {
        this.setPhase(null);
        this.setProgress(p.step, p.total);
        this.part("eta").textContent = fmtSeconds(p.eta_seconds);
        this.addLoss(p.step, p.loss);
      } else if (event.kind === "state") {
        this.setState(p.to);
      } else if (event.kind === "preview") {
        this.addPreview(p);
      } else if (event.kind === "phase") {
        if (!FINAL.has(this.state)) this.setPhase(p);
      } else if (event.kind === "picks") {
        this.addPicks(p.picks);
      }
    }

    async loadHistory() {
      try {
        const events = items(await api("GET", `/v1/jobs/${this.id}/events?limit=1000`));
        const state = this.state;
        for (const ev of events) this.apply(ev);
        this.setState(state);
      } catch (err) {
        showError(this.part("error"), err.message);
      }
    }

    listen() {
      this.source = new EventSource(`/v1/jobs/${this.id}/events`);
      for (const kind of ["progress", "state", "preview", "phase", "picks"]) {
        this.source.addEventListener(kind, (msg) => this.apply(JSON.parse(msg.data)));
      }
      this.source.addEventListener("end", () => { this.source.close(); this.refresh(); });
      if (this.state === "queued") this.pollQueue();
    }

    async refresh() {
      try {
        const job = await api("GET", `/v1/jobs/${this.id}`);
        this.setState(job.state, job.queue_position);
        if (job.state !== "succeeded") this.setProgress(job.step, job.total_steps);
        this.setError(job.error);
        this.setTook(job);
        this.el.dataset.adapterId = job.adapter_id || "";
        this.el.dispatchEvent(new CustomEvent("job-final", { bubbles: true, detail: job }));
      } catch (err) {
        showError(this.part("error"), err.message);
      }
    }

    async cancel() {
      const yes = $('[data-action="confirm-cancel"]', this.el);
      yes.disabled = true;
      try {
        const job = await api("POST", `/v1/jobs/${this.id}/cancel`);
        this.confirmBox.hidden = true;
        this.setState(job.state, job.queue_position);
        if (FINAL.has(job.state)) this.refresh();
      } catch (err) {
        showError(this.part("error"), err.message);
      } finally {
        yes.disabled = false;
      }
    }
  }

  // --- new style: drag and drop, preview, upload --------------------------------------------------------

  function initNewStyle() {
    const form = $("#style-form");
    const input = $("#image");
    const zone = $("#dropzone");
    const list = $("#file-list");
    const errorEl = $("#form-error");
    const maxBytes = Number(form.dataset.maxBytes);
    const maxImages = Number(form.dataset.maxImages) || 1;
    let files = [];  // [{file, caption input}], in upload order

    const kind = () => (form.querySelector('input[name="kind"]:checked') || {}).value || "style";

    function render() {
      list.replaceChildren();
      list.hidden = !files.length;
      const subject = kind() === "subject";
      files.forEach((entry, n) => {
        const { file } = entry;
        const li = document.createElement("li");
        li.className = "file-item";
        const img = document.createElement("img");
        img.alt = `Preview of image ${n + 1}`;
        const info = document.createElement("p");
        info.className = "small file-meta";
        info.textContent = `${file.name} · ${fmtBytes(file.size)}`;
        img.onload = () => { info.textContent = `${file.name} · ${fmtBytes(file.size)} · ${img.naturalWidth}×${img.naturalHeight} px`; };
        img.onerror = () => { img.hidden = true; info.textContent = `${file.name} · ${fmtBytes(file.size)} · this browser cannot preview it`; };
        img.src = entry.url;
        const body = document.createElement("div");
        body.className = "file-body";
        body.append(info);
        if (!subject) {
          const id = `caption-${n}`;
          const label = document.createElement("label");
          label.htmlFor = id; label.className = "small"; label.textContent = `Caption of image ${n + 1} (optional)`;
          const cap = document.createElement("input");
          cap.id = id; cap.className = "caption"; cap.maxLength = 200; cap.value = entry.caption;
          cap.placeholder = "empty = “<content> in <descriptor> style”";
          cap.addEventListener("input", () => { entry.caption = cap.value; });
          body.append(label, cap);
        }
        const remove = smallButton("Remove", "remove-image", "secondary");
        remove.setAttribute("aria-label", `Remove image ${n + 1} (${file.name})`);
        remove.addEventListener("click", () => { URL.revokeObjectURL(entry.url); files.splice(n, 1); render(); });
        body.append(remove);
        li.append(img, body);
        list.append(li);
      });
      const total = files.reduce((sum, e) => sum + e.file.size, 0);
      $("#file-info").textContent = files.length
        ? `${files.length} of at most ${maxImages} image${maxImages === 1 ? "" : "s"} · ${fmtBytes(total)}` : "";
    }

    function add(chosen) {
      showError(errorEl, "");
      for (const file of chosen) {
        if (files.length >= maxImages) {
          showError(errorEl, `At most ${maxImages} images; ${file.name} and any after it were left out.`);
          break;
        }
        if (file.size > maxBytes) {
          showError(errorEl, `${file.name} is ${fmtBytes(file.size)}; the limit is ${fmtBytes(maxBytes)} an image. Choose a smaller one.`);
        }
        files.push({ file, caption: "", url: URL.createObjectURL(file) });
      }
      render();
    }

    function showKind() {
      const subject = kind() === "subject";
      $("#style-fields").hidden = subject;
      $("#subject-fields").hidden = !subject;
      render();
    }
    for (const radio of $all('input[name="kind"]', form)) radio.addEventListener("change", showKind);

    input.addEventListener("change", () => { add(Array.from(input.files)); input.value = ""; });
    for (const name of ["dragenter", "dragover"]) {
      zone.addEventListener(name, (e) => { e.preventDefault(); zone.classList.add("over"); });
    }
    for (const name of ["dragleave", "drop"]) {
      zone.addEventListener(name, () => zone.classList.remove("over"));
    }
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      const dropped = e.dataTransfer && e.dataTransfer.files;
      if (dropped && dropped.length) add(Array.from(dropped));
    });

    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      showError(errorEl, "");
      if (!files.length) { showError(errorEl, "Choose at least one image first."); input.focus(); return; }
      const data = new FormData();
      data.append("kind", kind());
      if (kind() === "subject") {
        const word = $("#class_word").value.trim();
        if (!word) { showError(errorEl, "Say what the subject is in one word, e.g. “dog”."); $("#class_word").focus(); return; }
        data.append("class_word", word);
      } else {
        const descriptor = $("#descriptor").value.trim();
        if (!descriptor) { showError(errorEl, "Describe the style in a few words, e.g. “watercolor painting”."); $("#descriptor").focus(); return; }
        data.append("descriptor", descriptor);
        const content = $("#content").value.trim();
        if (content) data.append("content", content);
      }
      const captioned = kind() === "style" && files.some((entry) => entry.caption.trim());
      for (const entry of files) {
        data.append("image", entry.file, entry.file.name);
        if (captioned) data.append("caption", entry.caption.trim());  // one per image, in order; empty = default
      }
      for (const name of ["steps", "seed", "webhook"]) {
        const v = $(`#${name}`).value.trim();
        if (v) data.append(name, v);
      }
      const button = $("#submit-style");
      button.disabled = true;
      button.textContent = "Uploading…";
      try {
        const created = await api("POST", "/v1/styles", data);
        window.location.assign(`/styles/${created.style.id}`);
      } catch (err) {
        showError(errorEl, `The upload was refused: ${err.message}`);
        button.disabled = false;
        button.textContent = "Upload and train";
      }
    });
  }

  // --- generate form, gallery cards, curl snippet (style page and gallery page) ------------------------------

  function slug(text, fallback) {
    const out = (text || "").toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 48).replace(/-+$/, "");
    return out || fallback;
  }

  // Every setting of a generation, by the names the generate form's inputs carry (storage/generation_settings.py
  // lists them; the form renders the list as data-setting-names).
  function settingNames() {
    const form = $("#gen-form");
    return form ? JSON.parse(form.dataset.settingNames || "[]") : [];
  }

  function reuseSettings(gen) {
    return Object.fromEntries(settingNames().map((name) => [name, gen[name] ?? null]));
  }

  function smallButton(label, action, className) {
    const b = document.createElement("button");
    b.type = "button"; b.className = `${className} small`; b.textContent = label; b.dataset.action = action;
    return b;
  }

  // The same card the server renders (api/templates/_gallery.html, shot_cards).
  function shotCard(gen, url, n, ctx) {
    const li = document.createElement("li");
    li.className = "shot";
    li.dataset.generationId = gen.id;
    const a = document.createElement("a");
    a.href = url; a.target = "_blank"; a.rel = "noopener";
    const img = document.createElement("img");
    img.src = url; img.alt = gen.prompt;
    a.append(img);
    const prompt = document.createElement("p");
    prompt.className = "small prompt";
    prompt.textContent = gen.prompt;
    const meta = document.createElement("p");
    meta.className = "small muted";
    meta.textContent = `seed ${gen.seed} · strength ${gen.style_strength} · ${gen.steps} steps · ${fmtTime(gen.queued_at)}`;
    const actions = document.createElement("div");
    actions.className = "shot-actions";
    const dl = document.createElement("a");
    dl.className = "button secondary small"; dl.href = url; dl.textContent = "Download";
    dl.setAttribute("download", `${slug(ctx.styleName, "base-model")}-${gen.seed}-${n}.png`);
    const reuse = smallButton("Use these settings again", "reuse", "secondary");
    reuse.dataset.settings = JSON.stringify(reuseSettings(gen));
    actions.append(dl, reuse);
    actions.append(smallButton("Delete", "delete-generation", "danger"));
    li.append(a, prompt, meta, actions);
    return li;
  }

  function shellQuote(text) { return `'${String(text).replace(/'/g, "'\\''")}'`; }

  // The request just made, as one curl command (JSON; multipart when files were sent).
  function curlFor(body, files) {
    const url = `${window.location.origin}/v1/generations?wait=60`;
    const lines = [`curl -X POST ${shellQuote(url)}`, `  -H "Authorization: Bearer $STYLEDROP_KEY"`];
    if (files.length) {
      for (const [k, v] of Object.entries(body)) lines.push(`  -F ${shellQuote(`${k}=${v}`)}`);
      for (const [k, f] of files) lines.push(`  -F ${shellQuote(`${k}=@${f.name}`)}`);
    } else {
      lines.push(`  -H "Content-Type: application/json"`, `  -d ${shellQuote(JSON.stringify(body))}`);
    }
    return lines.join(" \\\n");
  }

  function genProgressText(gen) {
    if (gen.state === "queued") {
      return gen.queue_position ? `queued, position ${gen.queue_position}` : "queued, waiting for a worker";
    }
    if (typeof gen.step === "number" && gen.steps) return `generating, step ${gen.step} of ${gen.steps}`;
    return "generating";
  }

  function initGenerate(ctx) {
    const form = $("#gen-form");
    if (!form) return;
    const gallery = $("#gallery");
    const genError = $("#gen-error");
    const adapterSelect = $("#gen_version");  // its value is the chosen version's adapter id
    const styleSelect = $("#gen_style");  // the gallery: each style once, its versions fill adapterSelect

    // The chosen style's versions, the default selected (or `adapterId` when it is one of them).
    function fillVersions(adapterId) {
      const opt = styleSelect.selectedOptions[0];
      const versions = JSON.parse((opt && opt.dataset.versions) || "[]");
      adapterSelect.replaceChildren();
      if (!versions.length) adapterSelect.append(new Option("—", ""));
      for (const [id, label] of versions) {
        adapterSelect.append(new Option(label, id, false, adapterId ? id === adapterId : label.endsWith("(default)")));
      }
      adapterSelect.disabled = !versions.length;
    }
    if (styleSelect) styleSelect.addEventListener("change", () => fillVersions(null));

    // "Use these settings again" on the gallery: the style whose versions hold the image's adapter.
    function chooseStyleOf(adapterId) {
      const opt = [...styleSelect.options].find((o) => JSON.parse(o.dataset.versions || "[]").some(([id]) => id === adapterId));
      styleSelect.value = opt ? opt.value : "";
      fillVersions(opt ? adapterId : null);
      return Boolean(opt) || !adapterId;
    }
    for (const [id, out] of [["style_strength", "style_strength_out"], ["strength", "strength_out"],
      ["subject_weight", "subject_weight_out"]]) {
      const input = $(`#${id}`);
      if (!input) continue;
      const show = () => { $(`#${out}`).textContent = Number(input.value).toFixed(2).replace(/0$/, ""); };
      input.addEventListener("input", show);
      show();
    }

    function styleNameFor(adapterId) {
      if (styleSelect) {
        const opt = styleSelect.selectedOptions[0];
        return adapterId && opt ? opt.textContent : "";
      }
      return ctx.styleName;
    }

    async function follow(gen, placeholder, styleName) {
      let current = gen;
      const text = placeholder.querySelector("p");
      const bar = placeholder.querySelector("progress");
      while (current.state === "queued" || current.state === "running") {
        text.textContent = `${current.prompt || placeholder.dataset.prompt || ""}: ${genProgressText(current)}`;
        if (bar && typeof current.progress === "number") bar.value = current.progress;
        await new Promise((r) => setTimeout(r, 1000));
        try { current = await api("GET", `/v1/generations/${gen.id}`); } catch (err) {
          text.textContent = `${gen.prompt}: ${err.message}`;
          return;
        }
      }
      if (current.state === "succeeded") {
        const cards = current.image_urls.map((url, n) => shotCard(current, url, n, { ...ctx, styleName }));
        placeholder.replaceWith(...cards);
      } else {
        placeholder.classList.remove("pending");
        placeholder.classList.add("failed");
        if (bar) bar.remove();
        text.textContent = `${current.prompt}: failed — ${(current.error && current.error.message) || "unknown error"}`;
      }
    }

    function pendingCard(gen) {
      const li = document.createElement("li");
      li.className = "shot pending";
      li.dataset.generationId = gen.id;
      const p = document.createElement("p");
      p.className = "small";
      const bar = document.createElement("progress");
      bar.max = 1; bar.value = 0;
      bar.setAttribute("aria-label", `Progress of ${gen.prompt}`);
      li.append(p, bar);
      return li;
    }

    for (const li of $all('.shot[data-pending="1"]')) {
      const name = li.closest(".gallery-group") ? $("h3", li.closest(".gallery-group")).textContent : "";
      follow({ id: li.dataset.generationId, state: "queued", prompt: li.dataset.prompt || "" }, li,
        ctx.styleName || name.replace(/ · adapter v\d+[\s\S]*$/, "").trim());
    }

    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      showError(genError, "");
      const prompt = $("#prompt").value.trim();
      if (!prompt) { showError(genError, "Write a prompt first, e.g. “a cat sitting on a chair”."); $("#prompt").focus(); return; }
      const adapterId = adapterSelect ? adapterSelect.value : form.dataset.adapterId;
      const body = { prompt };
      const negative = $("#negative_prompt").value.trim();
      if (negative) body.negative_prompt = negative;
      if (adapterId) body.adapter_id = adapterId;
      body.style_strength = Number($("#style_strength").value);
      const subject = $("#gen_subject");
      if (subject && subject.value) {
        body.subject_adapter_id = subject.value;
        body.subject_weight = Number($("#subject_weight").value);
      }
      for (const [id, name] of [["guidance_scale", "guidance_scale"], ["text_guidance", "text_guidance"], ["gen_steps", "steps"], ["gen_seed", "seed"], ["num_images", "num_images"]]) {
        const v = $(`#${id}`).value.trim();
        if (v) body[name] = Number(v);
      }
      const init = $("#init_image").files[0];
      const mask = $("#mask").files[0];
      if (mask && !init) { showError(genError, "A mask needs an init image too."); return; }
      const files = [];
      if (init) {
        files.push(["init_image", init]);
        if (mask) files.push(["mask", mask]); else body.strength = Number($("#strength").value);
      }
      let payload = body;
      if (files.length) {
        payload = new FormData();
        for (const [k, v] of Object.entries(body)) payload.append(k, String(v));
        for (const [k, f] of files) payload.append(k, f, f.name);
      }
      const button = $("#generate");
      button.disabled = true;
      try {
        const gen = await api("POST", "/v1/generations", payload);
        $("#gallery-empty").hidden = true;
        $("#curl-snippet").textContent = curlFor(body, files);
        $("#curl-box").hidden = false;
        $("#copy-done").textContent = "";
        const card = pendingCard(gen);
        gallery.prepend(card);
        follow(gen, card, styleNameFor(adapterId));
      } catch (err) {
        showError(genError, err.message);
      } finally {
        button.disabled = false;
      }
    });

    copyButton($("#copy-curl"), $("#curl-snippet"), $("#copy-done"));

    document.addEventListener("click", async (e) => {
      const target = e.target.closest("[data-action]");
      if (!target) return;
      if (target.dataset.action === "reuse") {
        const s = JSON.parse(target.dataset.settings);
        showError(genError, "");
        for (const [name, value] of Object.entries(s)) {
          const input = form.elements.namedItem(name);
          if (!input) continue;
          const text = value === null || value === undefined ? "" : String(value);
          if (input === adapterSelect && styleSelect) {
            if (!chooseStyleOf(text)) showError(genError, "The adapter of that image was deleted; the base model is selected instead.");
          } else if (input === adapterSelect) {  // the style page: one of this style's versions
            if (![...input.options].some((o) => o.value === text)) {
              const fallback = [...input.options].find((o) => o.textContent.endsWith("(default)"));
              if (fallback) input.value = fallback.value;
              showError(genError, "That image's version was deleted or belongs to another style; the default version is selected instead.");
            } else input.value = text;
          } else if (input.tagName === "SELECT") {
            const known = [...input.options].some((o) => o.value === text);
            input.value = known ? text : "";
            if (!known) showError(genError, name === "adapter_id"
              ? "The adapter of that image was deleted; the base model is selected instead."
              : "The subject adapter of that image was deleted; no subject is selected instead.");
          } else {
            input.value = text === "" && input.type === "range" ? input.defaultValue : text;  // unset: the default
          }
          input.dispatchEvent(new Event("input"));
        }
        form.scrollIntoView({ block: "start" });
        $("#prompt").focus();
      } else if (target.dataset.action === "delete-generation") {
        const li = target.closest("[data-generation-id]");
        const id = li.dataset.generationId;
        if (!window.confirm("Delete this generation and its images? This cannot be undone.")) return;
        target.disabled = true;
        try {
          await api("DELETE", `/v1/generations/${id}`);
          for (const el of $all(`.shot[data-generation-id="${id}"]`)) el.remove();
        } catch (err) {
          showError(genError, `Could not delete it: ${err.message}`);
          target.disabled = false;
        }
      }
    });
  }

  // --- style page: the job's way on (train again, delete adapter), generate, delete style --------------------

  const WHY = {
    cancelled: "Training was cancelled, so there is no adapter to generate with.",
    failed: "Training failed, so there is no adapter to generate with.",
    succeeded: "The adapter of this training was deleted.",
  };

  function initStylePage() {
    const root = $(".style-layout");
    const form = $("#gen-form");
    const fieldset = $("fieldset", form);
    initGenerate({ styleName: $("h1").textContent });
    initRounds(root.dataset.styleId);

    root.addEventListener("job-final", (e) => {
      const job = e.detail;
      const title = $("#job-title");
      const version = title ? title.dataset.version : "";
      if (title) {  // "Training v1 · first training" -> "Trained v1 · ..." / "No version (failed) · ..."
        const rest = title.textContent.replace(/^Training v\d+ · /, "");
        title.textContent = job.state === "succeeded" ? `Trained v${version} · ${rest}` : `No version (${job.state}) · ${rest}`;
      }
      if (job.state === "succeeded" && job.adapter_id) {
        form.dataset.adapterId = job.adapter_id;
        const select = $("#gen_version");
        if (select && ![...select.options].some((o) => o.value === job.adapter_id)) {
          select.prepend(new Option(`v${version} (default)`, job.adapter_id, true, true));
        }
        fieldset.disabled = false;
        $("#gen-wait").hidden = true;
        const dl = $("#download-adapter");
        dl.href = `/v1/adapters/${job.adapter_id}/file`;
        dl.hidden = false;
        $("#delete-adapter").dataset.adapterId = job.adapter_id;
        $("#delete-adapter").hidden = false;
        for (const el of $all('[data-role="version"]', root)) el.textContent = `v${version}`;
      } else if (WHY[job.state]) {
        $('#gen-wait [data-role="why"]').textContent = WHY[job.state];
        $("#train-again-box").hidden = false;
      }
    });

    $("#train-again").addEventListener("click", async (e) => {
      const button = e.currentTarget;
      const steps = $("#train-steps").value.trim();
      button.disabled = true;
      button.textContent = "Starting…";
      try {
        await api("POST", `/v1/styles/${root.dataset.styleId}/jobs`, steps ? { steps: Number(steps) } : {});
        window.location.reload();
      } catch (err) {
        showError($("#train-error"), err.message);
        button.disabled = false;
        button.textContent = "Train again";
      }
    });

    $("#delete-adapter").addEventListener("click", async (e) => {
      const button = e.currentTarget;
      const id = button.dataset.adapterId;
      const which = $('[data-role="version"]', button).textContent;
      if (!window.confirm(`Delete adapter ${which}? You can no longer generate with it or download it; your images and the other versions stay.`)) return;
      try {
        await api("DELETE", `/v1/adapters/${id}`);
        window.location.reload();
      } catch (err) {
        showError($("#style-error"), err.message);
      }
    });

    $("#delete-style").addEventListener("click", async () => {
      if (!window.confirm("Delete this style? Its training is cancelled and it disappears from your list.")) return;
      try {
        await api("DELETE", `/v1/styles/${root.dataset.styleId}`);
        window.location.assign("/styles");
      } catch (err) {
        showError($("#style-error"), err.message);
      }
    });
  }

  // --- versions and feedback rounds (style page) -----------------------------------------------------------------

  function initRounds(styleId) {
    const section = $("#rounds");
    const errorEl = $("#round-error");
    if (!section || !errorEl) return;
    const url = `/v1/styles/${styleId}`;

    // A job that finishes made a new version (or failed): reload, so the history, the scores, the samples and
    // the default the generate form uses are the server's. The first training updates the page in place instead.
    if ($("table.history tr[data-version]", section)) {
      $(".style-layout").addEventListener("job-final", () => window.location.reload());
    }

    // Every control here starts server work and then shows its result by reloading the page.
    async function run(button, busyText, work) {
      const label = button.textContent;
      for (const b of $all("button", section)) b.disabled = true;  // one action at a time
      button.textContent = busyText;
      showError(errorEl, "");
      try {
        await work();
        window.location.reload();
      } catch (err) {
        showError(errorEl, err.message);
        for (const b of $all("button", section)) b.disabled = false;
        button.textContent = label;
      }
    }

    // The round settings: only what the user filled in is sent (the API's defaults otherwise).
    function setting(id) {
      const el = $(`#${id}`);
      const v = el ? el.value.trim() : "";
      return v ? Number(v) : undefined;
    }

    for (const b of $all(".make-default", section)) {
      b.addEventListener("click", () => run(b, "Saving…",
        () => api("PATCH", url, { default_version: Number(b.dataset.version) })));
    }

    // A samples set reports done/total and an ETA (GET /v1/styles/{id}/samples): shown until every sample is
    // final, so the reloaded grid shows them all; a set still running when the page loads is followed the same way.
    const samples = $("#make-samples");
    const samplesLine = $("#samples-progress");
    async function followSamples(set) {
      while (set.done < set.total) {
        samplesLine.textContent = `Samples ${set.done}/${set.total} · ${Math.round(set.progress * 100)}% · ETA ${fmtSeconds(set.eta_seconds)}`;
        samplesLine.hidden = false;
        await new Promise((resolve) => setTimeout(resolve, 1000));
        set = await api("GET", `${url}/samples`);
      }
      samplesLine.textContent = `Samples ${set.done}/${set.total}`;
    }
    if (samples && samplesLine) {
      samples.addEventListener("click", () => run(samples, "Queueing…", async () => {
        const body = { prompts: setting("round-prompts"), images_per_prompt: setting("round-per-prompt") };
        const set = await api("POST", `${url}/samples`, body);
        samples.textContent = "Making samples…";
        await followSamples(set);
      }));
      api("GET", `${url}/samples`).then((set) => {
        if (set.done < set.total) {
          run(samples, "Making samples…", () => followSamples(set));
        }
      }).catch(() => { /* the button still works; a failed look only misses a running set */ });
    }

    const picks = () => $all("#samples .pick", section).filter((c) => c.checked);
    const count = $("#picked-count");
    if (count) {
      section.addEventListener("change", () => {
        const n = picks().length;
        count.textContent = `${n} picked`;
      });
    }

    const start = $("#start-round");
    if (start) {
      start.addEventListener("click", () => {
        const selection = picks().map((c) => ({ generation_id: c.dataset.generationId, index: Number(c.dataset.index) }));
        if (!selection.length) {
          showError(errorEl, "Tick the images that look right first.");
          return;
        }
        run(start, "Starting…", () => api("POST", `${url}/rounds`, { mode: "human", selection, steps: setting("round-steps") }));
      });
    }

    const auto = $("#automatic-round");
    if (auto) {
      auto.addEventListener("click", () => run(auto, "Starting…", () => api("POST", `${url}/rounds`, {
        mode: "automatic", steps: setting("round-steps"), prompts: setting("round-prompts"),
        per_prompt: setting("round-per-prompt"),
      })));
    }
  }

  // --- your own API keys: list, create (shown once), revoke ------------------------------------------------------

  function initKeys() {
    const errorEl = $("#keys-error");
    const body = $("#own-keys tbody");

    async function load() {
      try {
        const keys = items(await api("GET", "/v1/keys?limit=200"));
        body.replaceChildren();
        for (const k of keys) {
          const tr = document.createElement("tr");
          const label = `sd_${k.prefix}…`;
          tr.dataset.keyId = k.id;
          tr.dataset.state = k.revoked_at ? "revoked" : "active";
          cell(tr, label, "mono");
          cell(tr, fmtTime(k.created_at));
          cell(tr, k.last_used_at ? fmtTime(k.last_used_at) : "never");
          cell(tr, k.revoked_at ? `revoked ${fmtTime(k.revoked_at)}` : "active");
          const actions = cell(tr, "");
          if (!k.revoked_at) {
            const b = smallButton("Revoke", "revoke-key", "danger");
            b.setAttribute("aria-label", `Revoke key ${label}`);
            b.addEventListener("click", async () => {
              if (!window.confirm(`Revoke key ${label}? Programs using it stop working, and browser sessions signed in with it end.`)) return;
              b.disabled = true;
              try { await api("DELETE", `/v1/keys/${k.id}`); showError(errorEl, ""); } catch (err) {
                if (err.status === 401) { window.location.assign("/signin"); return; }
                showError(errorEl, err.message);
              }
              load();
            });
            actions.append(b);
          }
          body.append(tr);
        }
        labelCells($("#own-keys"));
      } catch (err) {
        if (err.status === 401) { window.location.assign("/signin?next=/keys"); return; }
        showError(errorEl, err.message);
      }
    }

    $("#create-key").addEventListener("click", async (e) => {
      const button = e.currentTarget;
      button.disabled = true;
      try {
        const created = await api("POST", "/v1/keys");
        $("#new-key-value").textContent = created.key;
        $("#new-key-copied").textContent = "";
        $("#new-key").hidden = false;
        showError(errorEl, "");
      } catch (err) { showError(errorEl, err.message); }
      button.disabled = false;
      load();
    });
    copyButton($("#copy-key"), $("#new-key-value"), $("#new-key-copied"));
    load();
  }

  // --- admin: jobs table, overview, filters, cancel/retry; polls every few seconds ------------------------

  const ADMIN_POLL_MS = 3000;

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.append(td);
    return td;
  }

  function kv(dl, entries) {
    dl.replaceChildren();
    for (const [k, v] of entries) {
      const dt = document.createElement("dt"); dt.textContent = k;
      const dd = document.createElement("dd"); dd.textContent = String(v);
      dl.append(dt, dd);
    }
  }

  // A worker's adapter cache as a few labelled figures. Device slots only on a GPU worker: on a CPU host
  // "resident on the GPU" means nothing (the worker reports its device with the stats).
  function cacheFigures(s) {
    const out = [];
    const onGpu = typeof s.device === "string" && s.device.startsWith("cuda");
    if (typeof s.cpu_cached === "number") out.push(["Adapters in memory", String(s.cpu_cached)]);
    if (onGpu && typeof s.gpu_resident === "number") out.push(["On the GPU", `${s.gpu_resident} of ${s.slots} slots`]);
    if (typeof s.hits_gpu === "number") {
      const lookups = s.hits_gpu + (s.hits_cpu || 0) + (s.misses || 0);
      out.push(["Hit rate", lookups ? `${Math.round(((s.hits_gpu + (s.hits_cpu || 0)) / lookups) * 100)}% of ${lookups}` : "no lookups yet"]);
    }
    if (typeof s.loads === "number") out.push(["Loads", `${s.loads} (${fmtSeconds(s.load_seconds)})`]);
    if (typeof s.evictions === "number") out.push(["Evictions", String(s.evictions)]);
    return out;
  }

  function initAdmin() {
    const stateSel = $("#filter-state");
    const userSel = $("#filter-user");
    const errorEl = $("#admin-error");
    const tbody = $("#admin-jobs tbody");
    let timer = null;

    async function loadUsers() {
      try {
        const users = items(await api("GET", "/v1/admin/users?limit=500"));
        for (const u of users) {
          const opt = document.createElement("option");
          opt.value = u.name; opt.textContent = u.name + (u.is_admin ? " (admin)" : "");
          userSel.append(opt);
        }
      } catch (err) { showError(errorEl, err.message); }
    }

    async function act(job, action, button) {
      button.disabled = true;
      try {
        await api("POST", `/v1/admin/jobs/${job.id}/${action}`);
        showError(errorEl, "");
      } catch (err) {
        showError(errorEl, `Could not ${action} job ${job.id.slice(0, 8)}: ${err.message}`);
      }
      refresh();
    }

    function renderJobs(jobs) {
      const focusedId = document.activeElement && document.activeElement.dataset
        ? document.activeElement.dataset.focusKey : null;
      tbody.replaceChildren();
      if (!jobs.length) {
        const tr = document.createElement("tr");
        const td = cell(tr, "No jobs match these filters.", "muted");
        td.colSpan = 12;
        tbody.append(tr);
      }
      for (const job of jobs) {
        const tr = document.createElement("tr");
        tr.dataset.jobId = job.id;
        tr.dataset.state = job.state;
        cell(tr, job.id.slice(0, 8), "mono").title = job.id;
        cell(tr, job.owner_name);
        const st = cell(tr, "");
        const badge = document.createElement("span");
        badge.className = "badge"; badge.dataset.state = job.state; badge.textContent = job.state;
        st.append(badge);
        const prog = cell(tr, "");
        const bar = document.createElement("progress");
        bar.max = 1; bar.value = job.progress;
        bar.setAttribute("aria-label", `Progress of job ${job.id.slice(0, 8)}`);
        prog.append(bar, ` ${job.step}/${job.total_steps}`);
        cell(tr, fmtTime(job.queued_at));
        cell(tr, fmtTime(job.started_at));
        cell(tr, fmtTime(job.finished_at));
        let duration = null;
        if (job.started_at) {
          const end = job.finished_at ? new Date(job.finished_at) : new Date();
          duration = (end - new Date(job.started_at)) / 1000;
        }
        cell(tr, fmtSeconds(duration));
        cell(tr, `${job.attempts}/${job.max_attempts}`);
        cell(tr, job.worker_host || "—");
        cell(tr, job.run_id ? job.run_id.slice(0, 8) : "—");  // jobs trained together share a run
        cell(tr, job.error ? `${job.error.code}: ${job.error.message}` : "", job.error ? "err" : "");
        const actions = cell(tr, "");
        const actionButton = (action, label, className) => {
          const b = document.createElement("button");
          b.type = "button"; b.className = `${className} small`; b.textContent = label;
          b.dataset.action = action; b.dataset.focusKey = `${action}-${job.id}`;
          b.setAttribute("aria-label", `${label} job ${job.id.slice(0, 8)} of ${job.owner_name}`);
          b.addEventListener("click", () => act(job, action, b));
          actions.append(b);
        };
        if (["queued", "running"].includes(job.state)) actionButton("cancel", "Cancel", "danger");
        if (["failed", "cancelled"].includes(job.state)) actionButton("retry", "Retry", "secondary");
        tbody.append(tr);
      }
      if (focusedId) {
        const again = $(`[data-focus-key="${focusedId}"]`, tbody);
        if (again) again.focus();
      }
    }

    function renderOverview(ov) {
      if (ov.queue_depths) kv($("#queue-depths"), Object.entries(ov.queue_depths));
      showError($("#queue-error"), ov.queue_error || "");
      kv($("#job-counts"), Object.entries(ov.job_counts));
      const wb = $("#workers tbody");
      wb.replaceChildren();
      if (!ov.workers_online.length) {
        const tr = document.createElement("tr");
        cell(tr, "No workers online.", "muted").colSpan = 5;
        wb.append(tr);
      }
      for (const w of ov.workers_online) {
        const tr = document.createElement("tr");
        cell(tr, w.kind, "nowrap");
        cell(tr, `${w.host} / ${w.pid}`, "host");
        cell(tr, w.current_id ? w.current_id.slice(0, 8) : "idle", "mono");
        cell(tr, fmtTime(w.heartbeat_at), "nowrap");
        const td = cell(tr, "", "cache");
        const figures = cacheFigures(w.stats || {});
        if (!figures.length) td.textContent = "Adapter cache not loaded yet";
        else { const dl = document.createElement("dl"); dl.className = "figures"; kv(dl, figures); td.append(dl); }
        wb.append(tr);
      }
    }

    async function refresh() {
      clearTimeout(timer);
      const params = new URLSearchParams({ limit: "200" });
      if (stateSel.value) params.set("state", stateSel.value);
      if (userSel.value) params.set("user", userSel.value);
      try {
        const [jobs, ov] = await Promise.all([
          api("GET", `/v1/admin/jobs?${params}`), api("GET", "/v1/admin/overview"),
        ]);
        renderJobs(items(jobs));
        renderOverview(ov);
        $("#admin-updated").textContent = fmtTime(new Date().toISOString());
        for (const table of $all("table", $("main"))) labelCells(table);
      } catch (err) {
        showError(errorEl, err.message);
      }
      timer = setTimeout(refresh, ADMIN_POLL_MS);
    }

    initAccounts();
    stateSel.addEventListener("change", refresh);
    userSel.addEventListener("change", refresh);
    $("#admin-filters").addEventListener("submit", (e) => { e.preventDefault(); refresh(); });
    loadUsers();
    refresh();
  }

  // --- admin: users and API keys (disable/enable, new key, rotate, revoke); reloaded after each action ----------

  function initAccounts() {
    const errorEl = $("#accounts-error");
    const usersBody = $("#admin-users tbody");
    const keysBody = $("#admin-keys tbody");

    function showKey(created, what) {
      $("#new-key-label").textContent = `${what} It is shown only now; copy it:`;
      $("#new-key-value").textContent = created.key;
      $("#new-key-copied").textContent = "";
      $("#new-key").hidden = false;
    }
    copyButton($("#copy-key"), $("#new-key-value"), $("#new-key-copied"));

    async function act(button, question, run) {
      if (question && !window.confirm(question)) return;
      button.disabled = true;
      try {
        await run();
        showError(errorEl, "");
      } catch (err) {
        showError(errorEl, err.message);
      }
      load();
    }

    function button(parent, label, aria, className, onClick) {
      const b = document.createElement("button");
      b.type = "button"; b.className = `${className} small`; b.textContent = label;
      b.setAttribute("aria-label", aria);
      b.addEventListener("click", () => onClick(b));
      parent.append(b);
    }

    function render(users, keys) {
      const names = new Map(users.map((u) => [u.id, u.name]));
      usersBody.replaceChildren();
      for (const u of users) {
        const tr = document.createElement("tr");
        tr.dataset.userId = u.id;
        cell(tr, u.name);
        cell(tr, u.is_admin ? "admin" : "user");
        cell(tr, u.disabled ? "disabled" : "active");
        const actions = cell(tr, "");
        if (u.disabled) {
          button(actions, "Enable", `Enable ${u.name}`, "secondary",
            (b) => act(b, null, () => api("POST", `/v1/admin/users/${u.id}/enable`)));
        } else {
          button(actions, "Disable", `Disable ${u.name}`, "danger",
            (b) => act(b, `Disable ${u.name}? Its keys and sessions stop working at once.`,
              () => api("POST", `/v1/admin/users/${u.id}/disable`)));
        }
        button(actions, "New key", `New key for ${u.name}`, "secondary", (b) => act(b, null, async () => {
          showKey(await api("POST", `/v1/admin/users/${u.id}/keys`), `New key for ${u.name}.`);
        }));
        usersBody.append(tr);
      }
      keysBody.replaceChildren();
      for (const k of keys) {
        const tr = document.createElement("tr");
        const label = `sd_${k.prefix}…`;
        const owner = names.get(k.user_id) || k.user_id;
        tr.dataset.keyId = k.id;
        tr.dataset.state = k.revoked_at ? "revoked" : "active";
        cell(tr, label, "mono");
        cell(tr, owner);
        cell(tr, fmtTime(k.created_at));
        cell(tr, fmtTime(k.last_used_at));
        cell(tr, k.revoked_at ? `revoked ${fmtTime(k.revoked_at)}` : "active");
        const actions = cell(tr, "");
        if (!k.revoked_at) {
          button(actions, "Rotate", `Rotate key ${label} of ${owner}`, "secondary",
            (b) => act(b, `Replace key ${label} of ${owner}? The old key and its sessions stop working.`, async () => {
              showKey(await api("POST", `/v1/admin/keys/${k.id}/rotate`), `New key for ${owner} (replaces ${label}).`);
            }));
          button(actions, "Revoke", `Revoke key ${label} of ${owner}`, "danger",
            (b) => act(b, `Revoke key ${label} of ${owner}? It and its sessions stop working.`,
              () => api("DELETE", `/v1/admin/keys/${k.id}`)));
        }
        keysBody.append(tr);
      }
    }

    async function load() {
      try {
        const [users, keys] = await Promise.all([api("GET", "/v1/admin/users?limit=500"),
                                                 api("GET", "/v1/admin/keys?limit=500")]);
        render(items(users), items(keys));
        for (const table of [$("#admin-users"), $("#admin-keys")]) labelCells(table);
      } catch (err) { showError(errorEl, err.message); }
    }

    load();
  }

  document.addEventListener("DOMContentLoaded", () => {
    for (const el of $all(".job[data-job-id]")) el.jobPanel = new JobPanel(el);
    const page = document.body.dataset.page;
    if (page === "new-style") initNewStyle();
    if (page === "style") initStylePage();
    if (page === "admin") initAdmin();
    if (page === "gallery") initGenerate({ styleName: "" });
    if (page === "keys") initKeys();
  });
})();
