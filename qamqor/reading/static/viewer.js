/* Qamqor reading viewer: images from the archive's DICOMweb (rendered frames and metadata) on
 * <canvas>; window/level, zoom, pan, invert, fit; mammography hanging (RCC LCC RMLO LMLO, right
 * breast on the left of the screen, chest walls facing each other); the AI overlay; priors.
 * No dependencies. Keyboard: 1-4 presets, +/- zoom, F fit, I invert, A AI overlay, Esc close
 * the prior. */
(function () {
  "use strict";

  var dataNode = document.getElementById("viewer-data");
  if (!dataNode) return;
  var STUDY = JSON.parse(dataNode.textContent);
  var TEXT = JSON.parse(document.getElementById("viewer-text").textContent);
  var reader = document.getElementById("reader");
  var statusLine = document.getElementById("viewer-status");
  var readout = document.getElementById("wl-readout");
  var overlayButton = document.getElementById("overlay-toggle");
  var BASE = "/dicom-web/studies/";

  var state = { invert: false, overlay: false, preset: "default", active: null };
  var viewports = [];   // every Viewport on screen (current and prior panes)
  var metadataCache = {};

  function instanceUrl(img) {
    return BASE + img.study + "/series/" + img.series + "/instances/" + img.sop;
  }

  function firstValue(meta, tag) {
    var element = meta && meta[tag];
    if (!element || !element.Value || !element.Value.length) return null;
    return element.Value[0];
  }

  function allValues(meta, tag) {
    var element = meta && meta[tag];
    return element && element.Value ? element.Value : [];
  }

  /* The series' DICOM JSON metadata (one request per series, cached). */
  function seriesMetadata(img) {
    var key = img.study + "/" + img.series;
    if (!metadataCache[key]) {
      metadataCache[key] = fetch(BASE + img.study + "/series/" + img.series + "/metadata", {
        headers: { Accept: "application/dicom+json" }, credentials: "same-origin"
      }).then(function (r) { return r.ok ? r.json() : []; }).then(function (list) {
        var bySop = {};
        list.forEach(function (m) { bySop[firstValue(m, "00080018")] = m; });
        return bySop;
      }).catch(function () { return {}; });
    }
    return metadataCache[key].then(function (bySop) { return bySop[img.sop] || null; });
  }

  function fetchBitmap(url) {
    return fetch(url, { headers: { Accept: "image/jpeg" }, credentials: "same-origin" })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.blob();
      })
      .then(function (blob) { return createImageBitmap(blob); });
  }

  /* Presets relative to the image's own window (radiographs have no absolute units): the
   * stored window, then narrower/shifted ones. `s` is +1 where bright tissue has high values. */
  var PRESETS = {
    "default": function (c, w) { return { c: c, w: w }; },
    "mammo-standard": function (c, w) { return { c: c, w: w * 0.85 }; },
    "mammo-dense": function (c, w, s) { return { c: c + 0.2 * w * s, w: w * 0.5 }; },
    "mammo-skin": function (c, w, s) { return { c: c - 0.3 * w * s, w: w * 0.6 }; },
    "chest-lung": function (c, w, s) { return { c: c - 0.05 * w * s, w: w * 0.7 }; },
    "chest-mediastinum": function (c, w, s) { return { c: c + 0.15 * w * s, w: w * 0.6 }; },
    "chest-bone": function (c, w, s) { return { c: c + 0.25 * w * s, w: w * 0.5 }; }
  };
  var PRESET_KEYS = {
    mammo: ["default", "mammo-standard", "mammo-dense", "mammo-skin"],
    chest: ["default", "chest-lung", "chest-mediastinum", "chest-bone"]
  };

  /* One image on one canvas. */
  function Viewport(container, img, options) {
    this.img = img;
    this.options = options || {};
    this.element = document.createElement("div");
    this.element.className = "viewport";
    this.element.tabIndex = 0;
    this.canvas = document.createElement("canvas");
    this.label = document.createElement("span");
    this.label.className = "vp-label";
    this.label.textContent = this.options.label || img.hanging || img.view || "";
    this.element.appendChild(this.canvas);
    this.element.appendChild(this.label);
    container.appendChild(this.element);
    this.bitmap = null;
    this.overlayBitmap = null;
    this.scale = 1; this.panX = 0; this.panY = 0; this.fitted = true;
    this.flipH = false; this.flipV = false;
    this.window = null; this.baseWindow = null; this.sign = 1; this.requested = null;
    this.preview = null;  // window shown by a quick client-side adjustment while re-rendering
    this.bind();
    this.load();
  }

  Viewport.prototype.size = function () {
    var ratio = window.devicePixelRatio || 1;
    var rect = this.element.getBoundingClientRect();
    return { w: Math.max(1, Math.round(rect.width * ratio)), h: Math.max(1, Math.round(rect.height * ratio)) };
  };

  /* A rendered frame as large as `target` (device pixels; default: the viewport on screen),
   * never larger than the image: the archive then decodes no more than is shown. */
  Viewport.prototype.renderUrl = function (sop, series, win, target) {
    var size = target || this.size();
    var cols = this.img.columns || size.w, rows = this.img.rows || size.h;
    var vw = Math.max(1, Math.min(cols, Math.round(size.w)));
    var vh = Math.max(1, Math.min(rows, Math.round(size.h)));
    var url = BASE + this.img.study + "/series/" + series + "/instances/" + sop +
      "/rendered?viewport=" + vw + "," + vh + "&quality=92";
    if (win) url += "&window=" + win.c.toFixed(2) + "," + Math.max(1, win.w).toFixed(2);
    return url;
  };

  /* The size the image is drawn at now, in device pixels. */
  Viewport.prototype.drawnSize = function () {
    return { w: this.cols() * this.scale, h: this.rows() * this.scale };
  };
  Viewport.prototype.cols = function () { return this.img.columns || (this.bitmap ? this.bitmap.width : 1); };
  Viewport.prototype.rows = function () { return this.img.rows || (this.bitmap ? this.bitmap.height : 1); };

  /* After zooming in: fetch a sharper rendering once the drawn image outgrows the bitmap. */
  Viewport.prototype.ensureResolution = function () {
    var self = this;
    clearTimeout(this.sharpenTimer);
    this.sharpenTimer = setTimeout(function () {
      if (!self.bitmap) return;
      var drawn = self.drawnSize();
      if (drawn.w <= self.bitmap.width * 1.25 || self.bitmap.width >= self.cols()) return;
      self.rerender({ w: drawn.w * 1.5, h: drawn.h * 1.5 });
    }, 200);
  };

  Viewport.prototype.load = function () {
    var self = this;
    setStatus(TEXT.loading);
    var meta = seriesMetadata(this.img).then(function (m) { self.applyMetadata(m); return m; });
    var image = fetchBitmap(this.renderUrl(this.img.sop, this.img.series, null));
    Promise.all([image, meta]).then(function (results) {
      self.bitmap = results[0];
      if (self.options.mirror) self.orient();
      self.fit();
      self.element.dataset.loaded = "1";
      // Milliseconds from the start of navigation to the first image on screen (and to all).
      var now = performance.now();
      if (!window.qamqorFirstImageMs) {
        window.qamqorFirstImageMs = now;
        document.body.dataset.firstImageMs = String(Math.round(now));
      }
      document.body.dataset.lastImageMs = String(Math.round(now));
      setStatus("");
      if (state.overlay) self.loadOverlay();
      if (state.preset !== "default") self.applyPreset(state.preset);
    }).catch(function (error) {
      if (window.console) console.error("image load failed", error);
      self.element.dataset.loaded = "error";
      setStatus(TEXT.failed);
    });
  };

  Viewport.prototype.applyMetadata = function (meta) {
    this.meta = meta;
    var c = parseFloat(firstValue(meta, "00281050"));
    var w = parseFloat(firstValue(meta, "00281051"));
    var bits = parseInt(firstValue(meta, "00280101"), 10) || 12;
    var slope = parseFloat(firstValue(meta, "00281053")) || 1;
    var intercept = parseFloat(firstValue(meta, "00281052")) || 0;
    if (!(w > 0) || isNaN(c)) {
      var max = (Math.pow(2, bits) - 1) * slope + intercept;
      c = (intercept + max) / 2; w = Math.max(1, max - intercept);
    }
    this.baseWindow = { c: c, w: w };
    this.sign = firstValue(meta, "00280004") === "MONOCHROME1" ? -1 : 1;
    var orientation = allValues(meta, "00200020");
    this.orientation = orientation.length === 2 ? orientation : null;
  };

  /* Mammograms: right breast with its chest wall on the right of its viewport (nipple pointing
   * left), left breast the other way, so the two breasts hang back to back. From Patient
   * Orientation when the header has it, else from the image (the chest wall side is brighter). */
  Viewport.prototype.orient = function () {
    var side = this.img.laterality;
    if (side !== "R" && side !== "L") return;
    var rowDirection = this.orientation ? String(this.orientation[0]) : "";
    var chestWallRight;
    if (rowDirection.indexOf("A") === 0) chestWallRight = false;       // rows run to the nipple
    else if (rowDirection.indexOf("P") === 0) chestWallRight = true;
    else chestWallRight = brighterRight(this.bitmap);
    this.flipH = side === "R" ? !chestWallRight : chestWallRight;
    var columnDirection = this.orientation ? String(this.orientation[1]) : "";
    this.flipV = columnDirection.indexOf("H") === 0;
    this.element.dataset.flipped = this.flipH ? "1" : "0";
  };

  function brighterRight(bitmap) {
    var probe = document.createElement("canvas");
    probe.width = 64; probe.height = 64;
    var ctx = probe.getContext("2d");
    ctx.drawImage(bitmap, 0, 0, 64, 64);
    var data = ctx.getImageData(0, 0, 64, 64).data;
    var left = 0, right = 0;
    for (var y = 0; y < 64; y++) {
      for (var x = 0; x < 8; x++) {
        left += data[(y * 64 + x) * 4];
        right += data[(y * 64 + 63 - x) * 4];
      }
    }
    return right > left;
  }

  Viewport.prototype.fit = function () {
    if (!this.bitmap) return;
    var size = this.size();
    this.canvas.width = size.w; this.canvas.height = size.h;
    this.scale = Math.min(size.w / this.cols(), size.h / this.rows());
    this.panX = 0; this.panY = 0; this.fitted = true;
    if (this.options.mirror && (this.img.laterality === "R" || this.img.laterality === "L")) {
      // Chest wall against the inner edge: right breast to the right, left breast to the left.
      var spare = (size.w - this.cols() * this.scale) / 2;
      this.panX = this.img.laterality === "R" ? spare : -spare;
    }
    this.draw();
  };

  Viewport.prototype.zoom = function (factor, cx, cy) {
    if (!this.bitmap) return;
    var size = this.size();
    if (cx === undefined) { cx = size.w / 2; cy = size.h / 2; }
    var before = this.scale;
    this.scale = Math.min(Math.max(this.scale * factor, 0.02), 40);
    var k = this.scale / before;
    // Keep the point under the cursor in place.
    this.panX = (this.panX + size.w / 2 - cx) * k - size.w / 2 + cx;
    this.panY = (this.panY + size.h / 2 - cy) * k - size.h / 2 + cy;
    this.fitted = false;
    this.draw();
    this.ensureResolution();
  };

  Viewport.prototype.draw = function () {
    var canvas = this.canvas, ctx = canvas.getContext("2d");
    var size = this.size();
    if (canvas.width !== size.w || canvas.height !== size.h) {
      canvas.width = size.w; canvas.height = size.h;
    }
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    if (!this.bitmap) return;
    var showOverlay = state.overlay && this.overlayBitmap;
    var source = showOverlay ? this.overlayBitmap : this.bitmap;
    var w = this.cols() * this.scale, h = this.rows() * this.scale;
    ctx.save();
    ctx.translate(canvas.width / 2 + this.panX, canvas.height / 2 + this.panY);
    ctx.scale(this.flipH ? -1 : 1, this.flipV ? -1 : 1);
    var filters = [];
    if (this.preview && !showOverlay) filters.push(this.preview);
    if (state.invert && !showOverlay) filters.push("invert(1)");
    ctx.filter = filters.length ? filters.join(" ") : "none";
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(source, -w / 2, -h / 2, w, h);
    ctx.filter = "none";
    // The overlay image has the marks burnt in; without it, the findings are drawn here.
    if (state.overlay && !showOverlay) this.drawMarks(ctx, w, h);
    ctx.restore();
    this.element.dataset.overlay = showOverlay ? "1" : "0";
  };

  /* The AI's findings as rings with their rank and score, in image coordinates. */
  Viewport.prototype.drawMarks = function (ctx, w, h) {
    var findings = this.img.findings || [];
    if (!findings.length || !this.img.columns) return;
    var k = w / this.img.columns;
    var radius = Math.max(10, Math.min(w, h) * 0.05);
    ctx.lineWidth = Math.max(2, radius / 8);
    findings.forEach(function (f) {
      var x = -w / 2 + (f.x + 0.5) * k, y = -h / 2 + (f.y + 0.5) * k;
      ctx.strokeStyle = f.rank === 1 ? "#ffd400" : "#00e5ff";
      ctx.beginPath();
      ctx.arc(x, y, radius, 0, 2 * Math.PI);
      ctx.stroke();
    });
    ctx.save();
    ctx.scale(this.flipH ? -1 : 1, this.flipV ? -1 : 1);  // text reads left to right
    ctx.font = Math.round(Math.max(12, radius * 0.7)) + "px sans-serif";
    var sx = this.flipH ? -1 : 1, sy = this.flipV ? -1 : 1;
    findings.forEach(function (f) {
      var x = (-w / 2 + (f.x + 0.5) * k) * sx, y = (-h / 2 + (f.y + 0.5) * k) * sy;
      ctx.fillStyle = f.rank === 1 ? "#ffd400" : "#00e5ff";
      ctx.fillText(f.rank + ": " + Math.round(f.score * 100) + "%", x + radius + 4, y - radius / 2);
    });
    ctx.restore();
  };

  Viewport.prototype.loadOverlay = function () {
    var self = this;
    if (!this.img.overlay || this.overlayBitmap || this.overlayLoading) { this.draw(); return; }
    this.overlayLoading = true;
    var shown = this.bitmap ? { w: this.bitmap.width, h: this.bitmap.height } : null;
    fetchBitmap(this.renderUrl(this.img.overlay, this.img.overlay_series, null, shown))
      .then(function (bitmap) { self.overlayBitmap = bitmap; self.draw(); })
      .catch(function () { setStatus(TEXT.failed); })
      .then(function () { self.overlayLoading = false; });
  };

  Viewport.prototype.setWindow = function (win, immediate) {
    if (!this.baseWindow) return;
    var shown = this.window || this.baseWindow;
    this.window = { c: win.c, w: Math.max(1, win.w) };
    if (readout) readout.textContent = "C " + Math.round(this.window.c) + " · W " + Math.round(this.window.w);
    // At once: stretch what is on screen (contrast/brightness); then ask the archive for the
    // exact rendering with the new window.
    var contrast = shown.w / this.window.w;
    var shift = this.sign * (shown.c - this.window.c) / shown.w;
    this.preview = "contrast(" + contrast.toFixed(3) + ") brightness(" + (1 + shift).toFixed(3) + ")";
    this.draw();
    var self = this;
    clearTimeout(this.renderTimer);
    this.renderTimer = setTimeout(function () { self.rerender(null); }, immediate ? 0 : 250);
  };

  Viewport.prototype.rerender = function (target) {
    var self = this, win = this.window;
    var token = {};
    this.requested = token;
    // Keep the sharpness on screen: at least the size of the bitmap shown now.
    var size = target || (this.bitmap ? { w: this.bitmap.width, h: this.bitmap.height } : null);
    fetchBitmap(this.renderUrl(this.img.sop, this.img.series, win, size)).then(function (bitmap) {
      if (self.requested !== token) return;
      self.bitmap = bitmap; self.preview = null; self.draw();
    }).catch(function () { setStatus(TEXT.failed); });
  };

  Viewport.prototype.applyPreset = function (name) {
    if (!this.baseWindow) return;
    var preset = PRESETS[name] || PRESETS["default"];
    this.setWindow(preset(this.baseWindow.c, this.baseWindow.w, this.sign), true);
  };

  Viewport.prototype.bind = function () {
    var self = this, drag = null;
    this.element.addEventListener("pointerdown", function (e) {
      state.active = self;
      self.element.setPointerCapture(e.pointerId);
      var pan = e.button === 1 || e.shiftKey || e.button === 2;
      drag = { x: e.clientX, y: e.clientY, pan: pan, win: self.window || self.baseWindow };
      e.preventDefault();
    });
    this.element.addEventListener("pointermove", function (e) {
      if (!drag) return;
      var dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      var ratio = window.devicePixelRatio || 1;
      if (drag.pan) {
        self.panX += dx * ratio; self.panY += dy * ratio;
        drag.x = e.clientX; drag.y = e.clientY;
        self.fitted = false; self.draw();
      } else if (drag.win) {
        var step = drag.win.w / 400;
        self.setWindow({ c: drag.win.c + dy * step * self.sign, w: drag.win.w + dx * step * 2 });
      }
    });
    var end = function () { drag = null; };
    this.element.addEventListener("pointerup", end);
    this.element.addEventListener("pointercancel", end);
    this.element.addEventListener("contextmenu", function (e) { e.preventDefault(); });
    this.element.addEventListener("wheel", function (e) {
      e.preventDefault();
      var rect = self.element.getBoundingClientRect(), ratio = window.devicePixelRatio || 1;
      self.zoom(e.deltaY < 0 ? 1.15 : 1 / 1.15, (e.clientX - rect.left) * ratio, (e.clientY - rect.top) * ratio);
    }, { passive: false });
    this.element.addEventListener("focus", function () { state.active = self; });
  };

  function setStatus(text) { if (statusLine) statusLine.textContent = text; }

  /* Layouts ----------------------------------------------------------------------------------- */
  function clearPane(pane) {
    viewports = viewports.filter(function (v) {
      if (pane.contains(v.element)) { v.element.remove(); return false; }
      return true;
    });
    pane.innerHTML = "";
  }

  /* The "Four views" button shows only when pressing it changes what is on screen: a
     single series is shown instead of the hanging. */
  var currentPane = document.getElementById("pane-current");
  var hangingButton = document.querySelector("[data-action='hanging']");
  function hangingViews(study) { return (study.hanging || []).filter(function (x) { return x; }); }

  function showStudy(pane, study, seriesUid) {
    clearPane(pane);
    var grid = document.createElement("div");
    pane.appendChild(grid);
    var hanging = hangingViews(study);
    var isCurrent = pane === currentPane;
    if (isCurrent && hangingButton) hangingButton.hidden = !seriesUid || hanging.length < 2;
    if (!seriesUid && hanging.length) {
      // Hang what exists (RCC LCC RMLO LMLO order): one view fills the pane, never three
      // empty panes beside it.
      grid.className = "grid hanging n" + hanging.length;
      hanging.forEach(function (img) {
        viewports.push(new Viewport(grid, img, { mirror: true, label: img.hanging }));
      });
      return;
    }
    var series = study.series.filter(function (s) { return !seriesUid || s.uid === seriesUid; });
    var images = [];
    series.forEach(function (s) { images = images.concat(s.images); });
    if (!images.length) { pane.textContent = TEXT.noimages; return; }
    var shown = images.slice(0, 4);
    grid.className = "grid n" + shown.length;
    shown.forEach(function (img) {
      viewports.push(new Viewport(grid, img, { mirror: img.hanging !== "", label: img.hanging || img.view }));
    });
  }

  showStudy(currentPane, STUDY, null);

  /* Priors beside the current study. */
  var priorPane = document.getElementById("pane-prior");
  var priorBody = document.getElementById("pane-prior-body");
  function openPrior(uid, label) {
    fetch("/reading/api/studies/" + uid, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(function (prior) {
        priorPane.hidden = false;
        reader.classList.add("with-prior");
        document.getElementById("prior-title").textContent = TEXT.prior + ": " + label;
        showStudy(priorBody, prior, null);
        viewports.forEach(function (v) { v.fit(); });
      })
      .catch(function () { setStatus(TEXT.failed); });
  }
  function closePrior() {
    clearPane(priorBody);
    priorPane.hidden = true;
    reader.classList.remove("with-prior");
    viewports.forEach(function (v) { v.fit(); });
  }

  /* Tools --------------------------------------------------------------------------------------- */
  function targets() { return viewports; }
  function setOverlay(on) {
    state.overlay = on;
    if (overlayButton) overlayButton.setAttribute("aria-pressed", on ? "true" : "false");
    targets().forEach(function (v) { if (on) v.loadOverlay(); else v.draw(); });
  }
  function setInvert(on) {
    state.invert = on;
    var button = document.querySelector('[data-action="invert"]');
    if (button) button.setAttribute("aria-pressed", on ? "true" : "false");
    targets().forEach(function (v) { v.draw(); });
  }
  function applyPreset(name) {
    state.preset = name;
    var select = document.getElementById("preset");
    if (select) select.value = name;
    targets().forEach(function (v) { v.applyPreset(name); });
  }
  function zoomAll(factor) {
    var list = state.active && viewports.indexOf(state.active) >= 0 ? [state.active] : targets();
    list.forEach(function (v) { v.zoom(factor); });
  }

  document.addEventListener("click", function (e) {
    var button = e.target.closest("[data-action], [data-series], [data-prior]");
    if (!button) return;
    if (button.dataset.series) { showStudy(currentPane, STUDY, button.dataset.series); return; }
    if (button.dataset.prior) { openPrior(button.dataset.prior, button.textContent.trim()); return; }
    switch (button.dataset.action) {
      case "zoom-in": zoomAll(1.25); break;
      case "zoom-out": zoomAll(0.8); break;
      case "fit": targets().forEach(function (v) { v.fit(); }); break;
      case "invert": setInvert(!state.invert); break;
      case "overlay": setOverlay(!state.overlay); break;
      case "hanging": showStudy(currentPane, STUDY, null); break;
      case "close-prior": closePrior(); break;
    }
  });
  var presetSelect = document.getElementById("preset");
  if (presetSelect) presetSelect.addEventListener("change", function () { applyPreset(presetSelect.value); });

  document.addEventListener("keydown", function (e) {
    var tag = (e.target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "textarea" || tag === "select" || e.ctrlKey || e.metaKey || e.altKey) return;
    var keys = PRESET_KEYS[STUDY.template] || PRESET_KEYS.chest;
    if (e.key >= "1" && e.key <= "4") { applyPreset(keys[parseInt(e.key, 10) - 1]); }
    else if (e.key === "+" || e.key === "=") { zoomAll(1.25); }
    else if (e.key === "-") { zoomAll(0.8); }
    else if (e.key === "f" || e.key === "F") { targets().forEach(function (v) { v.fit(); }); }
    else if (e.key === "i" || e.key === "I") { setInvert(!state.invert); }
    else if ((e.key === "a" || e.key === "A") && overlayButton && !overlayButton.disabled) { setOverlay(!state.overlay); }
    else if (e.key === "Escape" && !priorPane.hidden) { closePrior(); }
    else return;
    e.preventDefault();
  });

  var resizeTimer = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () {
      viewports.forEach(function (v) { if (v.fitted) v.fit(); else v.draw(); });
    }, 100);
  });

  /* The claim is renewed while the radiologist works on the study. */
  var minutes = parseInt(reader.dataset.claimMinutes, 10) || 20;
  var lastActivity = Date.now();
  ["pointerdown", "keydown", "wheel"].forEach(function (name) {
    document.addEventListener(name, function () { lastActivity = Date.now(); }, { passive: true });
  });
  if (!reader.dataset.claimedByOther) {
    setInterval(function () {
      if (Date.now() - lastActivity > minutes * 60000) return;
      fetch(reader.dataset.claimUrl, {
        method: "POST", credentials: "same-origin",
        headers: { "X-CSRF-Token": reader.dataset.csrf, Accept: "application/json" }
      }).then(function (r) { if (r.status === 409) setStatus(TEXT.claimed); });
    }, Math.max(30000, minutes * 60000 / 3));
  }
})();
