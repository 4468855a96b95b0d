// The judging widget: shows pairs from its own queue, owns the keyboard, and sends answers in the
// background. Plain JavaScript, no build step. Talks to Streamlit through the components v1
// messages (componentReady / render / setComponentValue / setFrameHeight).
//
// Every answer gets an idempotency key at the key press and waits in the outbox (kept in
// localStorage, so a reload or a server restart loses nothing) until the server acknowledges its
// key; the whole outbox is sent each time, with one send in flight, resent when unanswered.
//
// Once the queue is down to refill_at pairs the widget asks for more with each send (the server
// draws up to prefetch), one draw in flight at a time. A press while no pair is on screen (the queue ran dry, or nothing is left)
// is never kept for a later pair: a notice says it was not recorded, and it is counted.
"use strict";
(() => {
  const RESEND_MS = 3000; // a send unanswered this long is sent again (server busy or restarting)
  const POLL_MS = 15000; // while nothing is left, ask again this often (leases of others expire)
  const NOTICE_MS = 2500; // how long the notice of a press not recorded stays

  const $ = (id) => document.getElementById(id);
  const root = $("root");
  const state = {
    args: null,
    annotator: null,
    queue: [], // pairs waiting, in the order to show them
    current: null, // {pair, shownAt}
    known: new Set(), // pair ids queued, on screen, answered or skipped in this page
    history: [], // answered {pair, key}, newest last: what undo takes back
    skipped: [],
    outbox: [],
    sentKeys: new Set(), // outbox keys sent at least once
    images: new Map(), // image id -> object URL of its decoded bytes
    seq: 0,
    inFlight: 0, // seq of the send awaiting a render, 0 when none
    sentAt: 0,
    unansweredSince: 0, // when the oldest send still unanswered went out, 0 when none
    lastPoll: 0,
    askedWith: null, // pairs held when the send in flight asked for more, null when it did not
    barren: Infinity, // an ask while holding this many brought nothing: not again until fewer
    ignored: 0, // presses with no pair on screen
    pressed: 0,
  };
  // For tests and benchmarks: what was on screen for every accepted press; presses with none.
  window.judgeLog = [];
  window.judgeIgnored = 0;

  const post = (type, extra) => window.parent.postMessage({ isStreamlitMessage: true, type, ...extra }, "*");
  const nowIso = () => new Date(performance.timeOrigin + performance.now()).toISOString();

  function newKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // Each page keeps its outbox under a key of its own (two tabs of one person must not overwrite
  // each other's) and rewrites it on every change and tick. A page that starts takes over every
  // outbox stored for this person: those of closed or crashed pages are sent again, and taking
  // a live page's is harmless (the keys make a resend a no-op; that page writes its own again).
  const instance = newKey();

  function storagePrefix() {
    return `judge:${state.args.storage_key}:${state.annotator}:`;
  }

  function persist() {
    try {
      if (state.outbox.length) localStorage.setItem(storagePrefix() + instance, JSON.stringify(state.outbox));
      else localStorage.removeItem(storagePrefix() + instance);
    } catch (e) {
      // Storage full or disabled: the outbox still lives in memory.
    }
  }

  function restore() {
    const prefix = storagePrefix();
    const have = new Set(state.outbox.map((m) => m.key));
    try {
      for (const key of Object.keys(localStorage)) {
        if (!key.startsWith(prefix) || key === prefix + instance) continue;
        let saved = [];
        try {
          saved = JSON.parse(localStorage.getItem(key)) || [];
        } catch (e) {
          saved = [];
        }
        localStorage.removeItem(key);
        for (const m of saved) {
          if (have.has(m.key)) continue;
          have.add(m.key);
          state.outbox.push(m);
          if (m.type === "answer") state.known.add(m.pair); // answered already: never shown again
        }
      }
    } catch (e) {
      // Storage disabled: nothing was kept.
    }
    persist();
  }

  // --- talking to the server -------------------------------------------------------------------

  function holdings() {
    const held = state.queue.map((p) => p.id);
    if (state.current) held.unshift(state.current.pair.id);
    return held;
  }

  // Whether a send asks for more pairs; a refill already in flight is never asked for twice, as
  // only one send is in flight. Each draw is a store write, so the widget asks only once half its
  // queue is gone: asking at every pair below prefetch made more, smaller draws.
  function wantMore() {
    const held = holdings().length;
    return held <= state.args.refill_at && held < state.barren && !state.args.exhausted && !state.args.error;
  }

  function send(extra) {
    const more = wantMore();
    state.askedWith = more ? holdings().length : null;
    state.seq += 1;
    state.inFlight = state.seq;
    state.sentAt = performance.now();
    if (!state.unansweredSince) state.unansweredSince = state.sentAt;
    for (const m of state.outbox) state.sentKeys.add(m.key);
    post("streamlit:setComponentValue", {
      dataType: "json",
      value: {
        seq: state.seq,
        annotator: state.annotator,
        outbox: state.outbox,
        held: holdings(),
        skipped: state.skipped,
        more,
        ...extra,
      },
    });
    showStatus();
  }

  function flush() {
    if (state.inFlight) return; // the render that answers it sends the rest
    if (state.outbox.some((m) => !state.sentKeys.has(m.key)) || wantMore()) send({});
  }

  function tick() {
    if (!state.args) return;
    const t = performance.now();
    if ((state.inFlight || state.outbox.length) && t - state.sentAt > RESEND_MS) {
      send({}); // unanswered: the server restarted or is busy; the keys make a resend harmless
    } else if (!state.inFlight && !state.current && state.args.exhausted && t - state.lastPoll > POLL_MS) {
      state.lastPoll = t;
      send({ poll: true });
    } else {
      flush();
    }
    persist();
    showStatus();
  }

  function onRender(args) {
    if (state.annotator !== args.annotator) {
      // Another person in this page: start over with their own outbox.
      Object.assign(state, {
        queue: [], current: null, known: new Set(), history: [], skipped: [], outbox: [], sentKeys: new Set(),
        askedWith: null, barren: Infinity,
      });
      state.annotator = args.annotator;
      state.args = args;
      restore();
    }
    state.args = args;
    for (const [id, url] of Object.entries(args.images)) {
      if (!state.images.has(id)) state.images.set(id, decoded(url));
    }
    const acked = new Set(args.acked);
    state.outbox = state.outbox.filter((m) => !acked.has(m.key));
    persist();
    let added = 0;
    for (const pair of args.pairs) {
      if (!state.known.has(pair.id)) {
        state.known.add(pair.id);
        state.queue.push(pair);
        added += 1;
      }
    }
    if (added) state.barren = Infinity;
    if (state.inFlight && args.seen_seq >= state.inFlight) {
      if (state.askedWith !== null && !added) state.barren = state.askedWith;
      state.inFlight = 0;
      state.unansweredSince = 0;
    }
    if (!state.current) showNext();
    else showProgress();
    flush();
    showStatus();
  }

  // An image's bytes as an object URL, decoded ahead of its turn so that showing it is only a swap.
  function decoded(dataUrl) {
    const comma = dataUrl.indexOf(",");
    const mime = dataUrl.slice(5, dataUrl.indexOf(";"));
    const raw = atob(dataUrl.slice(comma + 1));
    const bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    const url = URL.createObjectURL(new Blob([bytes], { type: mime }));
    const img = new Image();
    img.src = url;
    img.decode().catch(() => {});
    return url;
  }

  // --- what is on screen -----------------------------------------------------------------------

  function renderSide(el, views) {
    const box = el.querySelector(".views");
    box.replaceChildren();
    views.forEach((view, i) => {
      const fig = document.createElement("figure");
      fig.className = i === 0 ? "view main" : "view extra";
      const img = document.createElement("img");
      img.src = state.images.get(view.image) || "";
      img.alt = view.caption || "candidate image";
      img.dataset.image = view.image;
      fig.appendChild(img);
      if (view.caption) {
        const cap = document.createElement("figcaption");
        cap.textContent = view.caption;
        fig.appendChild(cap);
      }
      box.appendChild(fig);
    });
  }

  function show(pair) {
    state.current = { pair, shownAt: nowIso() };
    $("prompt").textContent = pair.prompt;
    $("context").textContent = pair.context;
    renderSide($("side-left"), pair.sides[0]);
    renderSide($("side-right"), pair.sides[1]);
    $("pair-id").textContent = `Pair ${pair.id}`;
    root.dataset.pair = String(pair.id);
    root.dataset.state = "pair";
    $("pair").hidden = false;
    $("empty").hidden = true;
    showProgress();
  }

  function showNext() {
    const pair = state.queue.shift();
    if (pair) {
      show(pair);
      return;
    }
    state.current = null;
    root.dataset.pair = "";
    $("pair").hidden = true;
    const waiting = !state.args.exhausted || state.inFlight;
    root.dataset.state = waiting ? "loading" : "done";
    const skipped = state.skipped.length;
    $("empty-text").textContent = waiting
      ? "Loading the next pairs…"
      : skipped
        ? `Only pairs you skipped are left (${skipped}).`
        : "Nothing left to judge here. Thank you!";
    $("unskip").hidden = waiting || !skipped;
    $("empty").hidden = false;
    showProgress();
  }

  function showProgress() {
    if (!state.args) return;
    const delta = state.outbox.reduce((n, m) => n + (m.type === "answer" ? 1 : -1), 0);
    const done = state.args.progress.done + delta;
    const remaining = Math.max(0, state.args.progress.remaining - delta);
    const total = done + remaining;
    $("progress-fill").style.width = `${total ? (100 * done) / total : 100}%`;
    $("progress-text").textContent = `${done} judged · ${remaining} to go`;
    resize();
  }

  function showStatus() {
    const el = $("status");
    const unsent = state.outbox.length;
    const late = state.unansweredSince && performance.now() - state.unansweredSince > RESEND_MS;
    el.dataset.state = !unsent ? "saved" : late ? "offline" : "unsent";
    el.textContent = !unsent ? "saved" : late ? `${unsent} unsent · retrying` : `${unsent} unsent`;
  }

  let lastHeight = 0;
  function resize() {
    const height = Math.ceil(document.documentElement.getBoundingClientRect().height);
    if (height !== lastHeight) {
      lastHeight = height;
      post("streamlit:setFrameHeight", { height });
    }
  }

  // --- actions ---------------------------------------------------------------------------------

  function answer(side, pressedAt) {
    state.pressed += 1;
    if (!state.current) {
      state.ignored += 1;
      window.judgeIgnored = state.ignored;
      notify(
        root.dataset.state === "loading"
          ? "Not recorded: the next pairs are still loading. Press again once a pair shows."
          : "Not recorded: no pair is on screen.",
      );
      return;
    }
    const { pair, shownAt } = state.current;
    const key = newKey();
    state.outbox.push({
      type: "answer",
      key,
      pair: pair.id,
      side,
      left_image: pair.left_image,
      gold: pair.gold,
      preview: pair.preview ?? null,
      shown_at: shownAt,
      answered_at: new Date(performance.timeOrigin + pressedAt).toISOString(),
    });
    persist();
    state.history.push({ pair, key });
    window.judgeLog.push({ pair: pair.id, side, key });
    showNext();
    painted(pressedAt);
    flush();
    showStatus();
  }

  function undo() {
    const last = state.history.pop();
    if (!last) return;
    state.outbox.push({ type: "undo", key: newKey(), target: last.key });
    persist();
    window.judgeLog.push({ pair: last.pair.id, undo: last.key });
    if (state.current) state.queue.unshift(state.current.pair);
    show(last.pair);
    flush();
    showStatus();
  }

  function skip() {
    if (!state.current) return;
    state.skipped.push(state.current.pair.id);
    showNext();
    flush();
  }

  function unskip() {
    for (const id of state.skipped) state.known.delete(id);
    state.skipped = [];
    send({ unskip: true });
    showNext();
  }

  // Press to next pair painted: a performance measure per press, read by the benchmark.
  function painted(pressedAt) {
    const n = state.pressed;
    requestAnimationFrame(() =>
      setTimeout(() => performance.measure(`judge-next-${n}`, { start: pressedAt, end: performance.now() }), 0),
    );
  }

  let noticeTimer = 0;
  function notify(text) {
    $("notice").textContent = text;
    $("notice").hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => {
      $("notice").hidden = true;
    }, NOTICE_MS);
  }

  function zoom(on) {
    root.classList.toggle("zoom", on);
    resize();
  }

  function toggleHelp(show) {
    $("help").hidden = show === undefined ? !$("help").hidden : !show;
  }

  // --- the keyboard: this frame's and the page's around it --------------------------------------

  function typing(target) {
    const tag = target && target.tagName;
    return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || (target && target.isContentEditable);
  }

  function onKeyDown(e, origin) {
    // Before the first render too: an answer key then is refused with a notice (see answer).
    if (typing(e.target) || e.ctrlKey || e.metaKey || e.altKey) return;
    // The event's time in this frame's clock (the page around it has its own time origin).
    const pressedAt = e.timeStamp + origin - performance.timeOrigin;
    const sides = { 1: "left", 2: "right", 3: "tie", 4: "both_bad" };
    if (e.key in sides) {
      if (!e.repeat) answer(sides[e.key], pressedAt);
    } else if (e.key === "Backspace" || e.key === "u") {
      if (!e.repeat) undo();
    } else if (e.key === "s") {
      if (!e.repeat) skip();
    } else if (e.key === "z") {
      zoom(true);
    } else if (e.key === "?") {
      toggleHelp();
    } else if (e.key === "Escape") {
      toggleHelp(false);
      zoom(false);
    } else {
      return;
    }
    e.preventDefault();
  }

  function onKeyUp(e) {
    if (e.key === "z") zoom(false);
  }

  window.addEventListener("keydown", (e) => onKeyDown(e, performance.timeOrigin));
  window.addEventListener("keyup", onKeyUp);
  try {
    const page = window.parent;
    const pageDown = (e) => {
      if (!window.frameElement || !window.frameElement.isConnected) {
        page.removeEventListener("keydown", pageDown);
        page.removeEventListener("keyup", pageUp);
        return;
      }
      onKeyDown(e, page.performance.timeOrigin);
    };
    const pageUp = (e) => onKeyUp(e);
    page.addEventListener("keydown", pageDown);
    page.addEventListener("keyup", pageUp);
  } catch (e) {
    // The page is of another origin: keys work once this frame has the focus.
  }

  document.addEventListener("click", (e) => {
    const button = e.target.closest("button");
    if (button && button.dataset.side) answer(button.dataset.side, e.timeStamp);
    else if (button && button.dataset.action === "skip") skip();
    else if (button && button.dataset.action === "undo") undo();
    else if (button && button.id === "help-button") toggleHelp();
    else if (button && button.id === "unskip") unskip();
    else if (e.target.tagName === "IMG") zoom(!root.classList.contains("zoom"));
  });

  window.addEventListener("message", (e) => {
    if (e.data && e.data.type === "streamlit:render") onRender(e.data.args);
  });
  new ResizeObserver(resize).observe(document.documentElement);
  setInterval(tick, 250);
  post("streamlit:componentReady", { apiVersion: 1 });
})();
