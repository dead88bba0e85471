// The service's page: classifies the images a person chooses, drops or pastes, through the public API
// only (GET v1/model, POST classify), so it shows nothing a program could not get.
"use strict";
(function () {
  var model = null;      // GET v1/model
  var limits = {};       // its serving.limits
  var TYPES = "JPEG, PNG, WebP, BMP or GIF";

  function el(id) { return document.getElementById(id); }

  function mib(bytes) {
    return bytes >= 1048576 ? (bytes / 1048576).toFixed(1) + " MiB" : (bytes / 1024).toFixed(0) + " KiB";
  }

  function megapixels(n) { return (n / 1e6).toFixed(n % 1e6 ? 1 : 0) + " MP"; }

  // --- the model ---------------------------------------------------------------------------------
  function realClasses(m) {
    var n = m.output.num_classes;
    return m.labels && m.labels.background_index !== null && m.labels.background_index !== undefined ? n - 1 : n;
  }

  function showModel(m) {
    model = m;
    limits = (m.serving && m.serving.limits) || {};
    el("model-name").textContent = m.name;
    el("model-version").textContent = m.version;
    var classes = realClasses(m);
    el("model-classes").textContent = classes + (classes !== m.output.num_classes ? " (+ background)" : "");
    el("model-input").textContent = m.preprocessing.size.join("\u00d7") + " RGB";
    el("model-backend").textContent = (m.serving && m.serving.backend) || "loading";
    var status = el("model-status");
    if (m.serving && m.serving.ready) {
      status.textContent = "ready";
      status.className = "status ready";
    } else {
      status.textContent = "the model is loading; this page asks again every second";
      status.className = "status";
    }
    var notice = el("notice");
    notice.hidden = !m.notice;
    if (m.notice) {
      notice.textContent = "";
      var lines = String(m.notice).split("\n");
      var head = document.createElement("strong");
      head.textContent = lines[0];
      notice.appendChild(head);
      notice.appendChild(document.createTextNode(lines.slice(1).join("\n")));
    }
    var parts = [];
    if (limits.max_body_bytes) parts.push("up to " + mib(limits.max_body_bytes) + " per request");
    if (limits.max_images_per_request) parts.push(limits.max_images_per_request + " images per request");
    if (limits.max_image_pixels) parts.push(megapixels(limits.max_image_pixels) + " per image");
    el("limits").textContent = TYPES + "; " + parts.join(", ");
  }

  function loadModel() {
    return fetch("v1/model", {cache: "no-store"}).then(function (r) {
      if (!r.ok) throw new Error("GET v1/model answered " + r.status);
      return r.json();
    }).then(function (m) {
      showModel(m);
      if (!(m.serving && m.serving.ready)) setTimeout(loadModel, 1000);
    }).catch(function (e) {
      el("model-status").textContent = "cannot reach the service (" + e.message + "); retrying";
      setTimeout(loadModel, 2000);
    });
  }

  // --- errors, in words ----------------------------------------------------------------------------
  // A headline per error code the page can meet; the service's own message follows it.
  function headline(status, code) {
    switch (code) {
      case "body_too_large":
        return "Too large to send: the service takes at most " + mib(limits.max_body_bytes || 0) + " per request.";
      case "image_too_large":
        return "Too many pixels: the limit is " + megapixels(limits.max_image_pixels || 0) + " per image.";
      case "too_many_pixels":
        return "Too many pixels together: the limit is " + megapixels(limits.max_request_pixels || 0) +
          " per request; send fewer images at once.";
      case "too_many_images":
        return "Too many images at once: the limit is " + limits.max_images_per_request + " per request.";
      case "over_memory_budget":
        return "Too large to decode within the service's memory budget.";
      case "unsupported_media_type":
        return "Not an image type the service takes: send " + TYPES + ".";
      case "invalid_image":
        return "Not an image the service can read: send " + TYPES + ".";
      case "empty_body":
        return "The file is empty.";
      default:
        if (status === 503) return "The service is busy or still loading; try again in a moment.";
        return "The service refused it (" + status + (code ? " " + code : "") + ").";
    }
  }

  // status: the answer's, or null for one part of a multipart answer (its code says what failed);
  // local: the page refused it before sending (a limit it read from v1/model)
  function showError(card, status, code, message, local) {
    var box = card.querySelector(".error");
    box.textContent = "";
    var b = document.createElement("b");
    b.textContent = headline(status, code);
    box.appendChild(b);
    var tag = local ? " [not sent: the service would answer " + status + " " + code + "]" :
      code ? " [" + (status ? status + " " : "") + code + "]" : "";
    box.appendChild(document.createTextNode(message + tag));
    box.hidden = false;
    card.querySelector(".state").hidden = true;
    card.classList.add("failed");
  }

  // --- results -------------------------------------------------------------------------------------
  function ms(x) { return x.toFixed(1) + " ms"; }

  function showResult(card, result, answer) {
    card.querySelector(".state").hidden = true;
    var list = card.querySelector(".predictions");
    list.textContent = "";
    result.predictions.forEach(function (p) {
      var li = document.createElement("li");
      li.className = "prediction";
      li.setAttribute("data-label", p.label);
      li.setAttribute("data-score", String(p.score));
      var label = document.createElement("span");
      label.className = "label";
      label.textContent = p.label;
      label.title = p.label + " (class " + p.index + ")";
      var bar = document.createElement("span");
      bar.className = "bar";
      var fill = document.createElement("span");
      fill.style.width = (p.score * 100).toFixed(1) + "%";
      bar.appendChild(fill);
      var pct = document.createElement("span");
      pct.className = "pct";
      pct.textContent = (p.score * 100).toFixed(1) + "%";
      li.appendChild(label);
      li.appendChild(bar);
      li.appendChild(pct);
      list.appendChild(li);
    });
    var t = result.timings_ms;
    card.querySelector(".timing").textContent = "server: " + ms(answer.timings_ms.total) + " for the request (" +
      "this image: preprocess " + ms(t.preprocess) + ", queue " + ms(t.queue) + ", inference " + ms(t.inference) +
      ") \u00b7 " + answer.model.name + " v" + answer.model.version;
    card.classList.add("done");
  }

  function newCard(file) {
    var card = el("card").content.firstElementChild.cloneNode(true);
    card.querySelector(".filename").textContent = file.name || "pasted image";
    var thumb = card.querySelector(".thumb");
    thumb.src = URL.createObjectURL(file);
    thumb.alt = file.name || "pasted image";
    thumb.onerror = function () {   // not an image this browser shows: an empty (transparent) one instead
      thumb.onerror = null;
      thumb.alt = "";
      thumb.src = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7";
    };
    el("results").insertBefore(card, el("results").firstChild);
    return card;
  }

  // One file goes as a raw body with its own Content-Type (as curl would send it); several go as one
  // multipart form per batch that fits the limits, answered part by part.
  function batches(items) {
    var out = [], current = [], bytes = 0;
    var maxImages = limits.max_images_per_request || 64, maxBytes = limits.max_body_bytes || Infinity;
    items.forEach(function (item) {
      var size = item.file.size + 512;   // a part's headers
      if (current.length && (current.length >= maxImages || bytes + size > maxBytes)) {
        out.push(current);
        current = [];
        bytes = 0;
      }
      current.push(item);
      bytes += size;
    });
    if (current.length) out.push(current);
    return out;
  }

  function send(items) {
    var topK = Math.min(5, limits.max_top_k || 5);
    var init = {method: "POST"};
    if (items.length === 1) {
      init.body = items[0].file;
      init.headers = {"Content-Type": items[0].file.type || "application/octet-stream"};
    } else {
      var form = new FormData();
      items.forEach(function (item, i) { form.append("image" + i, item.file, item.file.name || "pasted-" + i); });
      init.body = form;
    }
    return fetch("classify?top_k=" + topK, init).then(function (r) {
      return r.text().then(function (text) {
        var answer = null;
        try { answer = JSON.parse(text); } catch (e) { /* not JSON: shown as text below */ }
        return {status: r.status, answer: answer, text: text};
      });
    }).then(function (reply) {
      var answer = reply.answer;
      if (answer && answer.results && answer.results.length === items.length) {
        answer.results.forEach(function (result, i) {
          if (result.error) showError(items[i].card, null, result.error.code, result.error.message);   // a part
          else showResult(items[i].card, result, answer);
        });
        return;
      }
      var err = answer && answer.error && typeof answer.error === "object" ? answer.error : null;
      items.forEach(function (item) {
        showError(item.card, reply.status, err ? err.code : "", err ? err.message : reply.text.slice(0, 300));
      });
    }).catch(function (e) {
      items.forEach(function (item) {
        showError(item.card, 0, "", "the request failed before the service answered: " + e.message);
      });
    });
  }

  function classify(files) {
    files = Array.prototype.slice.call(files);
    if (!files.length) return;
    var items = [];
    files.forEach(function (file) {
      var card = newCard(file);
      if (limits.max_body_bytes && file.size > limits.max_body_bytes) {
        // the service would answer 413 body_too_large; not sending it spares the upload
        showError(card, 413, "body_too_large", (file.name || "the image") + " is " + mib(file.size) +
          ", over the limit of " + limits.max_body_bytes + " bytes (MAX_BODY_BYTES)", true);
        return;
      }
      items.push({file: file, card: card});
    });
    var groups = items.length === 1 ? [items] : batches(items);
    return Promise.all(groups.map(send));
  }

  // --- input: choose, drop, paste --------------------------------------------------------------------
  var input = el("files"), drop = el("drop");
  input.addEventListener("change", function () {
    var files = input.files;
    classify(files);
    input.value = "";
  });
  ["dragenter", "dragover"].forEach(function (name) {
    drop.addEventListener(name, function (e) { e.preventDefault(); drop.classList.add("over"); });
  });
  ["dragleave", "drop"].forEach(function (name) {
    drop.addEventListener(name, function () { drop.classList.remove("over"); });
  });
  drop.addEventListener("drop", function (e) {
    e.preventDefault();
    classify(e.dataTransfer.files);
  });
  document.addEventListener("paste", function (e) {
    var files = e.clipboardData ? e.clipboardData.files : [];
    if (files && files.length) {
      e.preventDefault();
      classify(files);
    }
  });

  loadModel();
})();
