// The local workspace page: renders snapshots of the local Slack and acts as one person.
// Plain JavaScript, no build step. Every snapshot re-renders the panes; scroll is kept.
"use strict";

const EMOJI = {
  white_check_mark: "✅", hourglass: "⌛", hourglass_flowing_sand: "⏳", x: "❌",
  heavy_multiplication_x: "✖️", gear: "⚙️", pencil2: "✏️", no_entry: "⛔", mag: "🔍",
  leftwards_arrow_with_hook: "↩️", warning: "⚠️", repeat: "🔁", red_circle: "🔴",
  large_green_circle: "🟢", arrows_counterclockwise: "🔄", zzz: "💤", thumbsup: "👍",
  tada: "🎉", speech_balloon: "💬", question: "❓", money_with_wings: "💸", memo: "📝",
  link: "🔗", information_source: "ℹ️", hammer_and_wrench: "🛠️", eyes: "👀",
  alarm_clock: "⏰", rotating_light: "🚨", no_entry_sign: "🚫", moneybag: "💰",
  memory: "🧠", robot_face: "🤖", wrench: "🔧", bulb: "💡", test_tube: "🧪",
};
const AVATAR_COLOURS = ["#e8912d", "#1264a3", "#4a154b", "#2eb67d", "#e01e5a", "#36c5f0"];

const page = { snapshot: null, user: null, channel: null, view: "channel", threadTs: null, events: null };
const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------ mrkdwn

function escapeHtml(text) {
  // Slack text arrives with &, < and > already escaped; escape whatever is left.
  return text
    .replace(/&(?!(amp|lt|gt|quot|#\d+);)/g, "&amp;")
    .replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

function personName(id) {
  const person = (page.snapshot?.people || []).find((p) => p.id === id);
  if (person) return person.name;
  if (id === page.snapshot?.bot_user_id) return "fixbot";
  return id;
}

function inline(text) {
  // Links and code become placeholders first, so *bold* may wrap a link.
  const tokens = [];
  const held = text.replace(/<[^<>\n]+>|`[^`\n]+`/g, (token) => `\u0000${tokens.push(token) - 1}\u0000`);
  return styled(escapeHtml(held)).replace(/\u0000(\d+)\u0000/g, (_, index) => token(tokens[index]));
}

function token(part) {
  if (part.startsWith("`")) return `<code>${escapeHtml(part.slice(1, -1))}</code>`;
  const [target, label] = part.slice(1, -1).split("|", 2);
  if (target.startsWith("@")) return `<span class="mention">@${escapeHtml(personName(target.slice(1)))}</span>`;
  if (target.startsWith("#")) return `<span class="mention">#${escapeHtml(label || target.slice(1))}</span>`;
  if (target.startsWith("!")) return `<span class="mention">@${escapeHtml(target.slice(1))}</span>`;
  const shown = styled(escapeHtml(label || target));
  // A permalink into this workspace opens its thread here.
  const permalink = target.match(/\/archives\/(\w+)\/p(\d+)(?:\?thread_ts=([\d.]+))?/);
  if (permalink) {
    const ts = permalink[3] || `${permalink[2].slice(0, -6)}.${permalink[2].slice(-6)}`;
    return `<a href="#" class="thread-link" data-channel="${escapeHtml(permalink[1])}" data-ts="${escapeHtml(ts)}">${shown}</a>`;
  }
  if (/^https?:\/\//.test(target)) return `<a href="${escapeHtml(target)}" target="_blank" rel="noopener">${shown}</a>`;
  return `<span class="link-text">${shown}</span>`;
}

function styled(html) {
  return html
    .replace(/(^|[\s(])\*([^*\n]+)\*(?=$|[\s).,:;!?])/g, "$1<b>$2</b>")
    .replace(/(^|[\s(])_([^_\n]+)_(?=$|[\s).,:;!?])/g, "$1<i>$2</i>")
    .replace(/(^|[\s(])~([^~\n]+)~(?=$|[\s).,:;!?])/g, "$1<s>$2</s>")
    .replace(/:([a-z0-9_+-]+):/g, (whole, name) => EMOJI[name] || whole);
}

function mrkdwn(text) {
  // ```pre``` first, then quotes and inline styles line by line.
  return (text || "").split("```").map((chunk, index) => {
    if (index % 2 === 1) return `<pre>${escapeHtml(chunk.replace(/^\n/, ""))}</pre>`;
    return chunk.split("\n").map((line) =>
      /^(&gt;|>) /.test(line) ? `<blockquote>${inline(line.replace(/^(&gt;|>) /, ""))}</blockquote>` : inline(line)
    ).join("<br>").replace(/<\/blockquote><br>/g, "</blockquote>");
  }).join("");
}

function textObject(object) {
  if (!object) return "";
  return object.type === "plain_text" ? escapeHtml(object.text).replace(/:([a-z0-9_+-]+):/g, (w, n) => EMOJI[n] || w) : mrkdwn(object.text);
}

// ------------------------------------------------------------------ Block Kit

function renderBlocks(blocks, target) {
  const box = document.createElement("div");
  for (const block of blocks) {
    const node = renderBlock(block, target);
    if (node) box.appendChild(node);
  }
  return box;
}

function renderBlock(block, target) {
  const node = document.createElement("div");
  node.className = `block ${block.type}`;
  switch (block.type) {
    case "section": {
      const text = document.createElement("div");
      text.className = "text";
      text.innerHTML = textObject(block.text);
      if (block.fields) {
        const fields = document.createElement("div");
        fields.className = "fields";
        for (const field of block.fields) {
          const cell = document.createElement("div");
          cell.innerHTML = textObject(field);
          fields.appendChild(cell);
        }
        text.appendChild(fields);
      }
      if (block.accessory && block.accessory.type === "button") {
        node.classList.add("section-with-accessory");
        node.append(text, renderButton(block.accessory, target));
      } else {
        node.appendChild(text);
      }
      return node;
    }
    case "context":
      for (const element of block.elements || []) {
        const part = document.createElement("span");
        if (element.type === "image") part.textContent = "▪";
        else part.innerHTML = textObject(element);
        node.appendChild(part);
      }
      return node;
    case "header":
      node.innerHTML = textObject(block.text);
      return node;
    case "divider":
      return Object.assign(document.createElement("hr"), { className: "block divider" });
    case "actions":
      node.className = "actions";
      for (const element of block.elements || []) {
        if (element.type === "button") node.appendChild(renderButton(element, target));
      }
      return node;
    default:
      return null; // rich_text: the message's text is shown instead
  }
}

function renderButton(button, target) {
  const node = document.createElement("button");
  node.className = `bk ${button.style || ""}`;
  node.innerHTML = textObject(button.text);
  if (button.url) {
    node.addEventListener("click", () => window.open(button.url, "_blank", "noopener"));
  } else if (target === "home") {
    node.addEventListener("click", () => act("ui/home/click", { action_id: button.action_id, value: button.value }));
  } else if (target) {
    node.addEventListener("click", () => act("ui/click", { channel: target.channel, ts: target.ts, action_id: button.action_id }));
  } else {
    node.disabled = true; // on an ephemeral message: the local Slack keeps no clickable copy
  }
  return node;
}

// ------------------------------------------------------------------ messages

function avatar(message) {
  const node = document.createElement("div");
  if (message.bot_id) {
    node.className = "avatar bot";
    node.textContent = "🛠";
    return node;
  }
  const people = page.snapshot.people.map((p) => p.id);
  const index = Math.max(0, people.indexOf(message.user));
  node.className = "avatar";
  node.style.background = AVATAR_COLOURS[index % AVATAR_COLOURS.length];
  node.textContent = personName(message.user).slice(0, 1).toUpperCase();
  return node;
}

function timeOf(ts) {
  return new Date(parseFloat(ts) * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
}

function renderMessage(message, { channel, inThread, ephemeral }) {
  const node = document.createElement("div");
  node.className = "message" + (ephemeral ? " ephemeral" : "") + (message.bot_id ? " from-bot" : "");
  node.dataset.ts = message.ts;
  node.appendChild(avatar(message));
  const body = document.createElement("div");
  body.className = "body";
  if (ephemeral) body.innerHTML = `<div class="only-you">👁 Only visible to you</div>`;

  const meta = document.createElement("div");
  meta.className = "meta";
  const name = message.bot_id ? "Fixbot" : personName(message.user);
  meta.innerHTML = `<span class="name">${escapeHtml(name)}</span>`;
  if (message.bot_id) {
    meta.innerHTML += `<span class="badge">APP</span>`;
    if (page.snapshot.demo) meta.innerHTML += `<span class="pill demo-pill">demo: scripted model</span>`;
  }
  meta.innerHTML += `<span class="time">${timeOf(message.ts)}</span>`;
  if (message.edited) meta.innerHTML += `<span class="edited">(edited)</span>`;
  body.appendChild(meta);

  const blocks = (message.blocks || []).filter((b) => b.type !== "rich_text");
  if (blocks.length) {
    body.appendChild(renderBlocks(blocks, ephemeral ? null : { channel, ts: message.ts }));
  } else if (message.text) {
    const text = document.createElement("div");
    text.className = "text";
    text.innerHTML = mrkdwn(message.text);
    body.appendChild(text);
  }
  for (const file of message.files || []) {
    const chip = document.createElement("a");
    chip.className = "file";
    chip.href = `ui/files/${encodeURIComponent(file.id)}`;
    chip.target = "_blank";
    chip.innerHTML = `📄 <span><b>${escapeHtml(file.title || file.name)}</b><br><span class="muted">${escapeHtml(file.name)}</span></span>`;
    body.appendChild(chip);
  }
  const branch = (message.text || "").match(/Pull request ready: .*\(branch ([\w./-]+)\)/);
  if (branch) {
    const open = document.createElement("div");
    open.className = "pr-link";
    const button = Object.assign(document.createElement("button"), { className: "bk primary view-diff", textContent: "View the pull request (diff)" });
    button.addEventListener("click", () => showDiff(branch[1]));
    open.appendChild(button);
    body.appendChild(open);
  }
  if (!inThread && !ephemeral) {
    const replies = message.replies || [];
    const link = document.createElement("div");
    link.className = "replies-link";
    link.innerHTML = replies.length
      ? `<a>${replies.length} ${replies.length === 1 ? "reply" : "replies"}</a><span class="muted">Last reply ${timeOf(replies[replies.length - 1].ts)}</span>`
      : `<a class="muted">Reply in thread</a>`;
    link.addEventListener("click", () => openThread(message.ts));
    body.appendChild(link);
  }
  node.appendChild(body);
  return node;
}

function byTs(a, b) {
  return parseFloat(a.ts) - parseFloat(b.ts);
}

function currentChannel() {
  return page.snapshot.channels.find((c) => c.id === page.channel) || page.snapshot.channels[0];
}

// ------------------------------------------------------------------ panes

function keepScroll(container, fill) {
  const atBottom = container.scrollHeight - container.scrollTop - container.clientHeight < 40;
  const top = container.scrollTop;
  container.replaceChildren();
  fill();
  container.scrollTop = atBottom ? container.scrollHeight : top;
}

function renderChannel() {
  const channel = currentChannel();
  page.channel = channel.id;
  $("channel-title").textContent = `# ${channel.name}`;
  $("composer-text").placeholder = `Message #${channel.name}`;
  $("channel-topic").innerHTML = `Try <code class="example">${escapeHtml(page.snapshot.example_command)}</code>`;
  const ephemerals = page.snapshot.ephemerals.filter((e) => e.channel === channel.id && !e.thread_ts);
  const items = [
    ...channel.messages.map((m) => ({ m, ephemeral: false })),
    ...ephemerals.map((m) => ({ m, ephemeral: true })),
  ].sort((a, b) => byTs(a.m, b.m));
  keepScroll($("messages"), () => {
    for (const { m, ephemeral } of items) {
      $("messages").appendChild(renderMessage(m, { channel: channel.id, inThread: false, ephemeral }));
    }
  });
}

function renderThread() {
  if (!page.threadTs) {
    $("thread-pane").hidden = true;
    return;
  }
  const channel = currentChannel();
  const parent = channel.messages.find((m) => m.ts === page.threadTs);
  if (!parent) return;
  $("thread-pane").hidden = false;
  $("thread-channel").textContent = `# ${channel.name}`;
  const ephemerals = page.snapshot.ephemerals.filter((e) => e.channel === channel.id && e.thread_ts === page.threadTs);
  const replies = [
    ...parent.replies.map((m) => ({ m, ephemeral: false })),
    ...ephemerals.map((m) => ({ m, ephemeral: true })),
  ].sort((a, b) => byTs(a.m, b.m));
  const box = $("thread-messages");
  keepScroll(box, () => {
    box.appendChild(renderMessage(parent, { channel: channel.id, inThread: true, ephemeral: false }));
    const divider = document.createElement("div");
    divider.className = "thread-divider";
    divider.textContent = `${parent.replies.length} ${parent.replies.length === 1 ? "reply" : "replies"}`;
    box.appendChild(divider);
    for (const { m, ephemeral } of replies) {
      box.appendChild(renderMessage(m, { channel: channel.id, inThread: true, ephemeral }));
    }
  });
}

function renderHome() {
  const view = page.snapshot.home;
  const box = $("home-view");
  box.replaceChildren();
  if (!view) {
    box.innerHTML = `<div class="home-empty">Opening Fixbot's Home…</div>`;
    return;
  }
  box.appendChild(renderBlocks(view.blocks || [], "home"));
}

function renderSidebar() {
  const list = $("channel-list");
  list.replaceChildren();
  for (const channel of page.snapshot.channels) {
    const item = document.createElement("li");
    const link = Object.assign(document.createElement("a"), { className: "nav-item", href: `#${channel.id}`, textContent: `# ${channel.name}` });
    if (page.view === "channel" && channel.id === page.channel) link.classList.add("active");
    link.addEventListener("click", (event) => { event.preventDefault(); showChannel(channel.id); });
    item.appendChild(link);
    list.appendChild(item);
  }
  $("home-link").classList.toggle("active", page.view === "home");
}

function renderPeople() {
  const select = $("person");
  if (!select.options.length) {
    for (const person of page.snapshot.people) {
      select.appendChild(new Option(`${person.name} (${person.role})`, person.id));
    }
    select.value = page.user;
  }
  const approvers = page.snapshot.approvers.map(personName);
  $("approval-rule").textContent = approvers.length ? `Approvers: ${approvers.join(", ")}` : "Anyone may approve";
  $("demo-pill").hidden = !page.snapshot.demo;
}

function render() {
  if (!page.snapshot) return;
  renderPeople();
  if (!page.channel) page.channel = page.snapshot.channels[0].id;
  renderSidebar();
  $("channel-pane").hidden = page.view !== "channel";
  $("home-pane").hidden = page.view !== "home";
  if (page.view === "home") renderHome();
  else renderChannel();
  renderThread();
}

function showChannel(channelId) {
  page.view = "channel";
  if (channelId !== page.channel) page.threadTs = null;
  page.channel = channelId;
  render();
}

function showHome() {
  page.view = "home";
  page.threadTs = null;
  render();
  act("ui/home", {});
}

function openThread(ts) {
  page.threadTs = ts;
  render();
  $("reply-text").focus();
}

async function showDiff(branch) {
  $("diff-title").textContent = `Pull request: ${branch}`;
  $("diff-body").textContent = "Loading…";
  $("diff-modal").hidden = false;
  const response = await fetch(`ui/diff?branch=${encodeURIComponent(branch)}`);
  if (!response.ok) {
    $("diff-body").textContent = await response.text();
    return;
  }
  const { repo, diff } = await response.json();
  $("diff-title").textContent = `Pull request: ${repo} · ${branch}`;
  $("diff-body").innerHTML = diff.split("\n").map((line) => {
    const html = escapeHtml(line) || " ";
    if (line.startsWith("diff --git") || line.startsWith("+++") || line.startsWith("---")) return `<span class="file-head">${html}</span>`;
    if (line.startsWith("@@")) return `<span class="hunk">${html}</span>`;
    if (line.startsWith("+")) return `<span class="add">${html}</span>`;
    if (line.startsWith("-")) return `<span class="del">${html}</span>`;
    return `${html}\n`;
  }).join("");
}

// ------------------------------------------------------------------ acting

async function act(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ user: page.user, channel: page.channel, ...body }),
  });
  if (!response.ok) toast(await response.text());
}

function toast(text) {
  $("toast").textContent = text;
  $("toast").hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { $("toast").hidden = true; }, 5000);
}

function listen() {
  if (page.events) page.events.close();
  page.events = new EventSource(`ui/events?user=${encodeURIComponent(page.user || "")}`);
  page.events.onmessage = (event) => {
    page.snapshot = JSON.parse(event.data);
    page.user = page.user || page.snapshot.people[0].id; // the server's default person
    render();
  };
}

function submitOnEnter(textarea, form) {
  textarea.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
}

function setUp() {
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("composer-text").value.trim();
    if (!text) return;
    $("composer-text").value = "";
    act(text.startsWith("/") ? "ui/command" : "ui/message", { text });
  });
  $("reply-composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("reply-text").value.trim();
    if (!text || !page.threadTs) return;
    $("reply-text").value = "";
    act("ui/message", { text, thread_ts: page.threadTs });
  });
  submitOnEnter($("composer-text"), $("composer"));
  submitOnEnter($("reply-text"), $("reply-composer"));
  $("channel-topic").addEventListener("click", () => {
    $("composer-text").value = page.snapshot.example_command;
    $("composer-text").focus();
  });
  $("thread-close").addEventListener("click", () => { page.threadTs = null; render(); });
  $("diff-close").addEventListener("click", () => { $("diff-modal").hidden = true; });
  $("home-link").addEventListener("click", (event) => { event.preventDefault(); showHome(); });
  document.addEventListener("click", (event) => {
    const link = event.target.closest(".thread-link");
    if (!link) return;
    event.preventDefault();
    showChannel(link.dataset.channel);
    openThread(link.dataset.ts);
  });
  $("person").addEventListener("change", () => {
    page.user = $("person").value;
    listen();
    if (page.view === "home") act("ui/home", {});
  });
  listen();
}

document.addEventListener("DOMContentLoaded", setUp);
