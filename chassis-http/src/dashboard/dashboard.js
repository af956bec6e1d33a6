// The chassis dashboard: follows every service's admin stream through the dashboard's proxy
// and draws one card per service. No dependencies, no build step.
//
// The service token (with the `admin` scope) comes from the page's fragment (`#token=...`,
// never sent to a server) or the form, and is kept in this tab's sessionStorage. The stream is
// read with fetch, not EventSource, because EventSource cannot send an Authorization header.
(function () {
  "use strict";
  var prefix = document.body.getAttribute("data-prefix");
  var main = document.getElementById("services");
  var notice = document.getElementById("notice");
  var form = document.getElementById("token-form");
  var HISTORY = 60;
  var cards = {};

  function tokenFromFragment() {
    var match = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
    if (match) {
      sessionStorage.setItem("chassis-token", decodeURIComponent(match[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
    return sessionStorage.getItem("chassis-token");
  }
  var token = tokenFromFragment();

  function auth() {
    return token ? { Authorization: "Bearer " + token } : {};
  }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k];
      else node.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { if (c) node.appendChild(c); });
    return node;
  }

  function sleep(ms) { return new Promise(function (r) { setTimeout(r, ms); }); }

  function fmt(n, digits) {
    if (n === null || n === undefined) return "–";
    return typeof n === "number" ? n.toFixed(digits || 0) : String(n);
  }

  function sparkline(values) {
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("viewBox", "0 0 " + (HISTORY - 1) + " 20");
    svg.setAttribute("preserveAspectRatio", "none");
    var max = Math.max.apply(null, values.concat([1]));
    var points = values.map(function (v, i) {
      return (HISTORY - values.length + i) + "," + (19 - (v / max) * 18).toFixed(1);
    }).join(" ");
    var line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points);
    svg.appendChild(line);
    return svg;
  }

  function card(service) {
    if (cards[service]) return cards[service];
    var status = el("span", { "class": "status", text: "connecting" });
    var body = el("div", { "class": "body" });
    var node = el("section", { "class": "card", "data-service": service }, [
      el("h2", {}, [el("span", { text: service }), status]), body]);
    node.addEventListener("click", function (e) {
      var button = e.target.closest("button[data-action]");
      if (button) act(service, button);
    });
    main.appendChild(node);
    cards[service] = { node: node, status: status, body: body, history: {} };
    return cards[service];
  }

  function remember(c, key, value) {
    var h = c.history[key] || (c.history[key] = []);
    h.push(value || 0);
    if (h.length > HISTORY) h.shift();
    return h;
  }

  function firstRate(component) {
    var rates = component.rates || {};
    var keys = Object.keys(rates);
    return keys.length ? rates[keys[0]] : 0;
  }

  function describe(component) {
    var s = component.state || {};
    switch (component.kind) {
      case "breaker":
        return { state: s.state, text: "failures " + fmt(s.failure_rate, 1) + "% · slow " +
          fmt(s.slow_call_rate, 1) + "% · " + s.calls_in_window + " calls in window" };
      case "bulkhead":
      case "rate_limiter":
        return { text: s.in_use + " / " + s.capacity + " in use · rejected " +
          fmt((component.rates || {}).rejected, 1) + "/s", fill: s.capacity ? s.in_use / s.capacity : 0 };
      case "retry_budget":
        return { text: "balance " + s.balance + " retries · spent " + s.spent };
      case "health":
        return { state: s.status, text: (s.checks || []).map(function (c) {
          return c.name + " " + c.status + " " + fmt(c.latency_ms, 1) + " ms";
        }).join(" · ") };
      case "outbox":
        return { text: "pending " + s.pending + " · oldest " + fmt(s.oldest_age_secs, 1) + " s · parked " + s.parked };
      case "consumer":
        return { text: "queued " + fmt(s.depth) + " · in flight " + fmt(s.in_flight) + " · retrying " +
          fmt(s.retry_depth) + " · DLQ " + fmt(s.dlq_depth) + " · " + fmt((component.rates || {}).handled, 1) + "/s",
          state: s.dlq_depth ? "dead_letters" : undefined };
      default:
        return { text: JSON.stringify(s) };
    }
  }

  // The rows of a component that can be acted on one by one: an outbox's parked rows (requeue
  // one by its row id), a consumer's dead-lettered messages (move one back by its message id).
  function items(component) {
    var s = component.state || {};
    if (component.kind === "outbox") {
      return (s.parked_rows || []).map(function (r) {
        return { id: String(r.id), action: "requeue", button: "requeue",
          label: "#" + r.id + " " + (r.subject || ""),
          detail: "attempts " + fmt(r.attempts) + (r.last_error ? " · " + r.last_error : "") };
      });
    }
    if (component.kind === "consumer") {
      return (s.dlq_messages || []).filter(function (m) { return m.id; }).map(function (m) {
        return { id: m.id, action: "requeue_dlq", button: "move back", label: m.id,
          detail: [m.type, m.reason || m.death].filter(function (x) { return x; }).join(" · ") };
      });
    }
    return [];
  }

  // The all-at-once actions of components that also have per-row ones say so.
  var LABELS = { requeue: "requeue all parked", requeue_dlq: "move all DLQ back" };

  var GROUPS = [["breaker", "Circuit breakers"], ["bulkhead", "Bulkheads"], ["rate_limiter", "Rate limits"],
    ["retry_budget", "Retry budgets"], ["outbox", "Outbox"], ["consumer", "Consumers"], ["health", "Health"]];

  function render(service, frame) {
    var c = card(service);
    var body = el("div", { "class": "body" });
    var components = frame.components || [];
    var kinds = GROUPS.map(function (g) { return g[0]; });
    components.forEach(function (k) {
      if (kinds.indexOf(k.kind) < 0) { kinds.push(k.kind); GROUPS.push([k.kind, k.kind]); }
    });
    GROUPS.forEach(function (group) {
      var mine = components.filter(function (k) { return k.kind === group[0]; });
      if (!mine.length) return;
      body.appendChild(el("h3", { text: group[1] }));
      mine.forEach(function (component) {
        var d = describe(component);
        var key = component.kind + "/" + component.name;
        var history = remember(c, key, firstRate(component));
        var label = el("div", {}, [el("div", { "class": "name", text: component.name }),
          el("div", { "class": "figures", text: d.text })]);
        if (d.fill !== undefined) {
          var bar = el("div", { "class": "bar" }, [el("span", { style: "width:" + Math.round(d.fill * 100) + "%" })]);
          label.appendChild(bar);
        }
        var state = d.state ? el("span", { "class": "state state-" + d.state, text: d.state.replace("_", " ") })
          : el("span", {});
        var row = el("div", { "class": "row component", "data-kind": component.kind, "data-name": component.name,
          "data-state": d.state || "" }, [label, state, component.rates ? sparkline(history) : el("span", {})]);
        var actions = (component.actions || []).map(function (a) {
          return el("button", { type: "button", "data-action": a, "data-kind": component.kind,
            "data-name": component.name, text: LABELS[a] || a.replace(/_/g, " ") });
        });
        if (actions.length) row.appendChild(el("div", { "class": "actions" }, actions));
        var list = items(component).map(function (item) {
          return el("div", { "class": "item", "data-id": item.id }, [
            el("div", {}, [el("div", { "class": "item-label", text: item.label }),
              el("div", { "class": "figures", text: item.detail })]),
            el("button", { type: "button", "data-action": item.action, "data-kind": component.kind,
              "data-name": component.name, "data-id": item.id, text: item.button })]);
        });
        if (list.length) row.appendChild(el("div", { "class": "items" }, list));
        body.appendChild(row);
      });
    });
    c.node.replaceChild(body, c.body);
    c.body = body;
    c.node.setAttribute("data-updated", String(frame.at || Date.now()));
  }

  function act(service, button) {
    var path = prefix + "/api/" + encodeURIComponent(service) + "/" +
      encodeURIComponent(button.getAttribute("data-kind")) + "/" +
      encodeURIComponent(button.getAttribute("data-name")) + "/" + button.getAttribute("data-action");
    var params = {};
    var id = button.getAttribute("data-id");
    if (id) params.id = id;
    fetch(path, { method: "POST", headers: Object.assign({ "Content-Type": "application/json" }, auth()),
      body: JSON.stringify(params) }).then(function (res) {
      if (!res.ok) return res.json().then(function (e) {
        notice.textContent = service + ": " + ((e.error || {}).message || res.status);
      });
      notice.textContent = "";
    }).catch(function (e) { notice.textContent = service + ": " + e; });
  }

  async function follow(service) {
    var c = card(service);
    for (;;) {
      try {
        var res = await fetch(prefix + "/api/" + encodeURIComponent(service) + "/stream", { headers: auth() });
        if (res.status === 401 || res.status === 403) {
          c.status.textContent = res.status === 401 ? "token needed" : "token lacks the admin scope";
          form.hidden = false;
          return;
        }
        if (!res.ok) throw new Error("HTTP " + res.status);
        c.status.textContent = "live";
        c.status.className = "status live";
        var reader = res.body.getReader();
        var decoder = new TextDecoder();
        var buffer = "";
        for (;;) {
          var chunk = await reader.read();
          if (chunk.done) break;
          buffer += decoder.decode(chunk.value, { stream: true });
          var end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            var event = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            var data = event.split("\n").filter(function (l) { return l.indexOf("data: ") === 0; })
              .map(function (l) { return l.slice(6); }).join("\n");
            if (data) render(service, JSON.parse(data));
          }
        }
      } catch (e) {
        c.status.textContent = "offline (" + e.message + ")";
      }
      c.status.className = "status";
      await sleep(2000);
    }
  }

  form.addEventListener("submit", function (e) {
    e.preventDefault();
    token = document.getElementById("token-input").value.trim();
    sessionStorage.setItem("chassis-token", token);
    location.reload();
  });

  fetch(prefix + "/services").then(function (res) { return res.json(); }).then(function (services) {
    if (!token) form.hidden = false;
    services.forEach(function (s) { follow(s.name); });
  }).catch(function (e) { notice.textContent = "cannot list the services: " + e; });
})();
