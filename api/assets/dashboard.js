// The pipeline dashboard: polls this API's Prometheus endpoint, keeps a rolling window of
// samples in memory and draws four uPlot charts from it. Counters become rates here, from
// successive polls, so the server keeps no history for the page.
//
// The latest readings are also written as plain <output> elements and the page's state as
// <body data-state="waiting|live|stale">: that is what the browser test reads from the
// dumped DOM, and what a screen reader gets.
//
// Rates divide by the page's own clock. Under Chromium's --virtual-time-budget (the browser
// test) that clock is virtual and runs ahead of the server's, so rates shown there are not
// real ones; counts (lag, dead-letter size) are.
//
// Query parameters: poll_ms (default 1000), window_s (default 300).
"use strict";

(function () {
  const params = new URLSearchParams(window.location.search);
  const POLL_MS = positive(params.get("poll_ms"), 1000);
  const WINDOW_S = positive(params.get("window_s"), 300);
  // Relative to /dashboard, so a proxy prefix in front of the API is kept.
  const METRICS_URL = "metrics";
  const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

  function positive(text, fallback) {
    const n = Number(text);
    return Number.isFinite(n) && n > 0 ? n : fallback;
  }

  // --- Prometheus text exposition format -------------------------------------------------

  const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?\s*$/;
  const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

  function parseValue(text) {
    if (text === "+Inf" || text === "Inf") return Infinity;
    if (text === "-Inf") return -Infinity;
    return Number(text);
  }

  // name -> [{labels, value}]
  function parseMetrics(text) {
    const families = new Map();
    for (const line of text.split("\n")) {
      if (line === "" || line.startsWith("#")) continue;
      const m = SAMPLE.exec(line);
      if (!m) continue;
      const labels = {};
      if (m[2]) {
        for (const l of m[2].matchAll(LABEL)) {
          labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
        }
      }
      if (!families.has(m[1])) families.set(m[1], []);
      families.get(m[1]).push({ labels, value: parseValue(m[3]) });
    }
    return families;
  }

  // Sum of a family's samples per value of `label` (all of them under "" when label is null).
  function sumBy(families, name, label) {
    const out = new Map();
    for (const s of families.get(name) || []) {
      if (!Number.isFinite(s.value)) continue;
      const key = label ? s.labels[label] || "" : "";
      out.set(key, (out.get(key) || 0) + s.value);
    }
    return out;
  }

  function maxOf(families, name) {
    let max = null;
    for (const s of families.get(name) || []) {
      if (Number.isFinite(s.value)) max = max === null ? s.value : Math.max(max, s.value);
    }
    return max;
  }

  // --- What one poll reads -------------------------------------------------------------

  function reading(families) {
    return {
      lag: sumBy(families, "kafka_consumergroup_group_lag", "group"),
      lagMaxSeconds: maxOf(families, "kafka_consumergroup_group_max_lag_seconds"),
      // Committed offsets per group: their rate is what each group consumes. The API's lag
      // sampler exports them, so this works when the processors run as other processes.
      committed: sumBy(families, "kafka_consumergroup_group_offset", "group"),
      // Only present where the processors and relay run in this process (`dhanman up`).
      events: sumBy(families, "dhanman_processor_events_total", "processor"),
      published: sumBy(families, "dhanman_events_published_total", null),
      dlq: sumBy(families, "dhanman_dlq_size", "topic"),
      batchSum: sumBy(families, "dhanman_processor_batch_duration_seconds_sum", "processor"),
      batchCount: sumBy(families, "dhanman_processor_batch_duration_seconds_count", "processor"),
      groupStatus: sumBy(families, "dhanman_lag_group_status", "group"),
      partitionStatus: families.get("dhanman_lag_partitions") || [],
    };
  }

  // --- Consumer group statuses ---------------------------------------------------------

  const GROUP_STATUS = ["OK", "WARN", "ERR"];

  // One row per group: its status (coloured by the row's data-status) and how many of its
  // partitions are in each partition status.
  function showGroups(now) {
    const body = document.querySelector("#groups tbody");
    const counts = new Map();
    for (const s of now.partitionStatus) {
      if (!Number.isFinite(s.value) || s.value <= 0) continue;
      const group = s.labels.group || "";
      if (!counts.has(group)) counts.set(group, []);
      counts.get(group).push(s.labels.status + " " + s.value);
    }
    const rows = [...now.groupStatus.keys()].sort().map((group) => {
      const status = GROUP_STATUS[now.groupStatus.get(group)] || "ERR";
      const row = document.createElement("tr");
      row.dataset.group = group;
      row.dataset.status = status;
      for (const [text, cls] of [[group, "group"], [status, "status"], [(counts.get(group) || []).join(", "), "partitions"]]) {
        const cell = document.createElement("td");
        cell.className = cls;
        cell.textContent = text;
        row.appendChild(cell);
      }
      return row;
    });
    if (rows.length === 0) {
      const row = document.createElement("tr");
      const cell = document.createElement("td");
      cell.colSpan = 3;
      cell.textContent = "No consumer group sampled yet.";
      row.appendChild(cell);
      rows.push(row);
    }
    body.replaceChildren(...rows);
  }

  // Per second between two readings of a counter; null across a reset (a process restart).
  function rate(now, before, seconds) {
    if (before === undefined || now === undefined || seconds <= 0) return null;
    const delta = now - before;
    return delta < 0 ? null : delta / seconds;
  }

  // --- Rolling series ------------------------------------------------------------------

  // One chart's data: shared timestamps, one array per series key, aligned and windowed.
  class Series {
    constructor() {
      this.times = [];
      this.values = new Map();
    }

    push(t, points) {
      for (const key of points.keys()) {
        if (!this.values.has(key)) this.values.set(key, this.times.map(() => null));
      }
      this.times.push(t);
      for (const [key, column] of this.values) {
        const v = points.get(key);
        column.push(v === undefined ? null : v);
      }
    }

    trim(oldest) {
      let drop = 0;
      while (drop < this.times.length && this.times[drop] < oldest) drop++;
      if (drop === 0) return;
      this.times.splice(0, drop);
      for (const column of this.values.values()) column.splice(0, drop);
    }

    keys() {
      return [...this.values.keys()].sort();
    }

    data(keys) {
      return [this.times, ...keys.map((k) => this.values.get(k))];
    }
  }

  // A uPlot chart, rebuilt when a series appears (uPlot fixes its series at construction).
  class Chart {
    // `counts`: the values are whole records, so the y axis gets no fractional ticks.
    constructor(id, unit, counts, empty) {
      this.box = document.getElementById(id);
      this.unit = unit;
      this.counts = counts;
      this.series = new Series();
      this.keys = [];
      this.plot = null;
      this.note = document.createElement("p");
      this.note.className = "empty";
      this.note.textContent = empty;
      this.box.appendChild(this.note);
    }

    update() {
      const keys = this.series.keys();
      this.note.hidden = keys.length > 0;
      if (keys.length === 0) return;
      const data = this.series.data(keys);
      if (this.plot && keys.join("\u0000") === this.keys.join("\u0000")) {
        this.plot.setData(data);
        return;
      }
      if (this.plot) this.plot.destroy();
      this.keys = keys;
      const unit = this.unit;
      this.plot = new uPlot(
        {
          width: Math.max(320, this.box.clientWidth - 16),
          height: 240,
          scales: { x: { time: true }, y: { range: (_, min, max) => [0, Math.max(1, max * 1.1)] } },
          series: [
            {},
            ...keys.map((key, i) => ({
              label: key,
              stroke: PALETTE[i % PALETTE.length],
              width: 2,
              value: (_, v) => (v === null || v === undefined ? "–" : format(v) + " " + unit),
            })),
          ],
          axes: [
            {},
            {
              size: 60,
              values: (_, ticks) => ticks.map(format),
              ...(this.counts ? { incrs: COUNT_STEPS } : {}),
            },
          ],
        },
        data,
        this.box,
      );
    }
  }

  const COUNT_STEPS = [1, 2, 5].flatMap((m) => [1, 10, 100, 1e3, 1e4, 1e5, 1e6].map((p) => m * p))
    .sort((a, b) => a - b);

  function format(v) {
    if (v === null || v === undefined || !Number.isFinite(v)) return "–";
    if (Number.isInteger(v)) return String(v);
    return Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(2);
  }

  // --- The page ------------------------------------------------------------------------

  const charts = {
    lag: new Chart("chart-lag", "records", true, "No consumer group has stored offsets yet."),
    throughput: new Chart("chart-throughput", "records/s", false, "Needs two polls."),
    dlq: new Chart("chart-dlq", "records", true, "No dead-letter topic exists yet."),
    duration: new Chart(
      "chart-duration",
      "ms",
      false,
      "No batch timings in this /metrics: processors report them in their own process " +
        "(`dhanman up` serves them here; separate processes on their own metrics listener).",
    ),
  };
  const out = (id, text) => {
    document.getElementById(id).textContent = text;
  };

  let previous = null;
  let samples = 0;
  // [time, lag summed over groups] in the window: its peak shows a drain already seen.
  const lagTotals = [];

  function record(t, now) {
    const seconds = previous ? t - previous.t : 0;
    const before = previous ? previous.reading : null;

    charts.lag.series.push(t, now.lag);
    showGroups(now);

    const throughput = new Map();
    let consumed = null;
    if (before) {
      for (const [group, offset] of now.committed) {
        const r = rate(offset, before.committed.get(group), seconds);
        throughput.set(group + " consumed", r);
        if (r !== null) consumed = (consumed || 0) + r;
      }
      for (const [processor, count] of now.events) {
        throughput.set("processor " + processor, rate(count, before.events.get(processor), seconds));
      }
      for (const [, count] of now.published) {
        throughput.set("relay published", rate(count, before.published.get(""), seconds));
      }
    }
    charts.throughput.series.push(t, throughput);

    // The total always; a topic of its own once it holds anything (there is one per topic).
    const dlq = new Map();
    if (now.dlq.size > 0) {
      let total = 0;
      for (const [topic, size] of now.dlq) {
        total += size;
        if (size > 0 || charts.dlq.series.values.has(topic)) dlq.set(topic, size);
      }
      dlq.set("all dead-letter topics", total);
    }
    charts.dlq.series.push(t, dlq);

    const duration = new Map();
    if (before) {
      for (const [processor, sum] of now.batchSum) {
        const batches = (now.batchCount.get(processor) || 0) - (before.batchCount.get(processor) || 0);
        const spent = sum - (before.batchSum.get(processor) || 0);
        // No batch in the interval leaves a gap rather than a misleading zero.
        duration.set(processor, batches > 0 && spent >= 0 ? (spent / batches) * 1000 : null);
      }
    }
    charts.duration.series.push(t, duration);

    const oldest = t - WINDOW_S;
    for (const chart of Object.values(charts)) {
      chart.series.trim(oldest);
      chart.update();
    }

    let lagTotal = 0;
    for (const v of now.lag.values()) lagTotal += v;
    lagTotals.push([t, lagTotal]);
    while (lagTotals.length > 0 && lagTotals[0][0] < oldest) lagTotals.shift();
    let dlqTotal = 0;
    for (const v of now.dlq.values()) dlqTotal += v;
    out("lag-total", format(lagTotal));
    out("lag-peak", format(Math.max(...lagTotals.map(([, v]) => v))));
    out("lag-max-seconds", format(now.lagMaxSeconds === null ? 0 : now.lagMaxSeconds));
    out("dlq-total", format(dlqTotal));
    out("throughput-total", consumed === null ? "–" : format(consumed));
    out("samples", String(samples));

    const missing = [];
    if (now.lag.size === 0) missing.push("consumer lag (no group has stored offsets)");
    if (now.events.size === 0) missing.push("processor counters");
    if (now.published.size === 0) missing.push("relay counters");
    document.getElementById("notes").textContent = missing.length
      ? "Not in this process's /metrics: " + missing.join(", ") + "."
      : "";

    previous = { t, reading: now };
  }

  async function poll() {
    try {
      const response = await fetch(METRICS_URL, { cache: "no-store" });
      if (!response.ok) throw new Error("GET /metrics answered " + response.status);
      const text = await response.text();
      samples += 1;
      record(Date.now() / 1000, reading(parseMetrics(text)));
      document.body.dataset.state = "live";
      document.getElementById("status").textContent =
        "live · polled " + new Date().toLocaleTimeString() + " · every " + POLL_MS + " ms";
    } catch (e) {
      if (document.body.dataset.state !== "waiting") document.body.dataset.state = "stale";
      document.getElementById("status").textContent = "last poll failed: " + e.message;
    } finally {
      // A timeout chain, not setInterval: polls never overlap on a slow endpoint.
      window.setTimeout(poll, POLL_MS);
    }
  }

  poll();
})();
