// Quiver's web pages in a real browser: Debian's chromium, headless, driven by playwright-core.
// Starts `quiver serve` (SQLite + local files in a temporary directory) from the built binary,
// fills it through the API, then: searches and filters the listing, opens an adapter, downloads
// a file from its files table and checks its sha256, signs in to see a private adapter and signs
// out to get a 404, submits the merge form and watches the job finish, checks that nothing of an
// adapter carrying <script>, onerror= and javascript: runs, measures page weight and checks that
// no request leaves the server, runs the page's curl snippet in sh (a file name with $(…) runs
// nothing), and runs axe-core on every page. Screenshots go to
// target/browser/. Usage: node tests/browser/run.mjs [path/to/quiver]

import { spawn, execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, mkdirSync, openSync, readFileSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";

const require = createRequire(import.meta.url);
const root = resolve(new URL("../..", import.meta.url).pathname);
const bin = resolve(process.argv[2] ?? join(root, "target/debug/quiver"));
const shots = join(root, "target/browser");
mkdirSync(shots, { recursive: true });
const data = mkdtempSync(join(tmpdir(), "quiver-browser-"));
const port = 18000 + Math.floor(Math.random() * 2000);
const base = `http://127.0.0.1:${port}`;

let failures = 0;
const results = [];
async function check(name, fn) {
  try {
    await fn();
    results.push(`ok   ${name}`);
  } catch (e) {
    failures += 1;
    results.push(`FAIL ${name}: ${e.stack ?? e}`);
  }
}
function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

// --- fixtures -------------------------------------------------------------------------------
function token(user, scope = "write") {
  const out = execFileSync(bin, ["token", "create", "--user", user, "--scope", scope, "--data-dir", data]);
  return out.toString().trim().split("\n").pop();
}

/// A PEFT adapter: rank-r f32 pairs on 16×16 q_proj and v_proj.
function adapterFiles(r, seed) {
  const d = 16;
  const tensors = {};
  const chunks = [];
  let offset = 0;
  for (const m of ["q_proj", "v_proj"]) {
    for (const [role, shape] of [["lora_A", [r, d]], ["lora_B", [d, r]]]) {
      const n = shape[0] * shape[1];
      const buf = Buffer.alloc(4 * n);
      for (let i = 0; i < n; i++) buf.writeFloatLE(Math.sin(seed * 7.1 + i * 0.37 + role.length) * 0.1, 4 * i);
      tensors[`base_model.model.model.layers.0.self_attn.${m}.${role}.weight`] = {
        dtype: "F32", shape, data_offsets: [offset, offset + buf.length],
      };
      chunks.push(buf);
      offset += buf.length;
    }
  }
  let header = JSON.stringify(tensors);
  header += " ".repeat((8 - (header.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(header.length));
  const weights = Buffer.concat([len, Buffer.from(header), ...chunks]);
  const config = JSON.stringify({
    peft_type: "LORA", r, lora_alpha: 2 * r, target_modules: ["q_proj", "v_proj"],
    base_model_name_or_path: "quiver-test/tiny-llama",
  });
  return { "adapter_config.json": Buffer.from(config), "adapter_model.safetensors": weights };
}

async function api(method, path, tok, body) {
  const headers = { Authorization: `Bearer ${tok}` };
  let payload;
  if (body instanceof FormData) payload = body;
  else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const res = await fetch(base + path, { method, headers, body: payload });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

async function adapter(tok, owner, name, opts, files) {
  await api("POST", "/api/v1/adapters", tok, {
    owner, name, base_model: "quiver-test/tiny-llama", ...opts,
  });
  const form = new FormData();
  for (const [path, bytes] of Object.entries(files)) form.append("file", new Blob([bytes]), path);
  await api("POST", `/api/v1/adapters/${owner}/${name}/versions`, tok, form);
}

const XSS = `<script>alert('desc')</script><img src=x onerror="alert('img')">`;
const CARD = `# Evil card\n\n<script>alert('card')</script>\n\n<img src=x onerror="alert('card-img')">\n\n` +
  `[click me](javascript:alert('link')) <a href="javascript:alert('a')" onclick="alert('click')">a</a>\n`;

// --- server ---------------------------------------------------------------------------------
const alice = token("alice");
const bob = token("bob");
const server = spawn(bin, ["serve", "--data-dir", data, "--bind", `127.0.0.1:${port}`], {
  stdio: ["ignore", "ignore", openSync(join(shots, "server.log"), "w")],
});
for (let i = 0; ; i++) {
  try {
    if ((await fetch(`${base}/healthz`)).ok) break;
  } catch {}
  if (i > 200) throw new Error("the server did not start");
  await new Promise((r) => setTimeout(r, 100));
}

let browser;
try {
  await adapter(alice, "alice", "summarizer", { description: "Summarises news articles", tags: ["summarization"] },
    { ...adapterFiles(8, 1), "README.md": Buffer.from("# Summarizer\n\nA LoRA for **summaries**.\n") });
  await adapter(alice, "alice", "translator", { description: "French to English", tags: ["translation"] }, adapterFiles(16, 2));
  await adapter(alice, "alice", "secret", { description: "Private work", private: true, tags: ["hidden"] }, adapterFiles(4, 3));
  await adapter(bob, "bob", "evil", { description: XSS, tags: ["xss"] },
    { ...adapterFiles(4, 4), "README.md": Buffer.from(CARD) });

  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  const context = await browser.newContext({ acceptDownloads: true });
  const page = await context.newPage();
  const dialogs = [];
  page.on("dialog", async (d) => {
    dialogs.push(d.message());
    await d.dismiss();
  });
  const foreign = [];
  page.on("request", (r) => {
    if (!r.url().startsWith(base)) foreign.push(r.url());
  });

  await check("listing: search and filter", async () => {
    await page.goto(`${base}/`);
    await page.screenshot({ path: join(shots, "listing.png"), fullPage: true });
    assert(await page.locator("article.card").count() === 3, "three public adapters on the front page");
    await page.fill("#q", "translat");
    await page.click("form.search button[type=submit]");
    const cards = await page.locator("article.card h2 a").allTextContents();
    assert(cards.length === 1 && cards[0] === "alice/translator", `search: ${cards}`);
    await page.goto(`${base}/`);
    await page.click("aside.facets a:text-is('summarization')");
    const tagged = await page.locator("article.card h2 a").allTextContents();
    assert(tagged.length === 1 && tagged[0] === "alice/summarizer", `tag facet: ${tagged}`);
    await page.goto(`${base}/`);
    await page.fill("#rank_min", "16");
    await page.click("form.search button[type=submit]");
    const ranked = await page.locator("article.card h2 a").allTextContents();
    assert(ranked.length === 1 && ranked[0] === "alice/translator", `rank filter: ${ranked}`);
  });

  await check("adapter page: open, read, download with sha256", async () => {
    await page.goto(`${base}/`);
    await page.click("article.card h2 a:text-is('alice/summarizer')");
    assert(page.url() === `${base}/alice/summarizer`, page.url());
    await page.screenshot({ path: join(shots, "adapter.png"), fullPage: true });
    const text = await page.textContent("main");
    for (const want of ["A LoRA for summaries", "LoRA summary", "vLLM ✓", "Spectra", "Files"]) {
      assert(text.includes(want), `adapter page lacks ${want}`);
    }
    const row = page.locator("table.files tr", { hasText: "adapter_model.safetensors" });
    const listed = (await row.locator("code.hash").textContent()).trim();
    const [download] = await Promise.all([page.waitForEvent("download"), row.locator("a").click()]);
    const bytes = readFileSync(await download.path());
    const sha = createHash("sha256").update(bytes).digest("hex");
    assert(sha === listed, `downloaded sha256 ${sha} != listed ${listed}`);
    await page.goto(`${base}/alice/summarizer/versions/1`);
    await page.screenshot({ path: join(shots, "version.png"), fullPage: true });
  });

  await check("xss: nothing from an adapter's description or card runs", async () => {
    await page.goto(`${base}/bob/evil`);
    await page.screenshot({ path: join(shots, "xss.png"), fullPage: true });
    const scripts = await page.locator("script").count();
    const handlers = await page.evaluate(() =>
      [...document.querySelectorAll("*")].filter((e) => [...e.attributes].some((a) => a.name.startsWith("on"))).length);
    const jsLinks = await page.locator("a[href^='javascript']").count();
    const imgs = await page.locator("main img").count();
    await page.click("text=click me").catch(() => {});
    await page.goto(`${base}/?q=evil`);
    assert(scripts === 0 && handlers === 0 && jsLinks === 0 && imgs === 0,
      `scripts ${scripts}, handlers ${handlers}, javascript links ${jsLinks}, images ${imgs}`);
    assert((await page.textContent("article.card")).includes("<script>"), "the description is shown as text");
    assert(dialogs.length === 0, `dialogs opened: ${dialogs}`);
  });

  await check("shell snippet: pasted into sh it runs no command and fetches the exact paths", async () => {
    // A file name made to run commands if the snippet quoted it with double quotes (or not at all).
    const name = "sub dir/x$(touch pwned)'q'`touch pwned2`.txt";
    await adapter(bob, "bob", "snippet", { description: "shell snippet" },
      { ...adapterFiles(4, 5), [name]: Buffer.from("hello") });
    try {
      await page.goto(`${base}/bob/snippet`);
      const snippet = await page.textContent("pre.snippet code");
      const dir = mkdtempSync(join(tmpdir(), "quiver-snippet-"));
      try {
        // `curl` is a shell function that records its arguments, one per line.
        const script = `curl() { for a in "$@"; do printf '%s\\n' "$a"; done >> args; }\n` +
          `QUIVER_URL='${base}' QUIVER_TOKEN=t\n${snippet}\n`;
        execFileSync("sh", ["-c", script], { cwd: dir });
        assert(!existsSync(join(dir, "pwned")) && !existsSync(join(dir, "pwned2")), "pasting the snippet ran a command");
        const args = readFileSync(join(dir, "args"), "utf8").split("\n");
        assert(args.includes(`bob/snippet/${name}`), `no -o of the exact path: ${args.join(" | ")}`);
        const url = args.find((a) => a.startsWith(`${base}/api/v1/adapters/bob/snippet/versions/`) && a.includes("/files/sub%20dir/"));
        assert(url, `no URL of the file: ${args.join(" | ")}`);
        const res = await fetch(url);
        assert(res.ok && (await res.text()) === "hello", `the snippet's URL does not download the file: ${url} ${res.status}`);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    } finally {
      await api("DELETE", "/api/v1/adapters/bob/snippet", bob);
    }
  });

  await check("sign in shows a private adapter; sign out hides it", async () => {
    const before = await page.goto(`${base}/alice/secret`);
    assert(before.status() === 404, `anonymous: ${before.status()}`);
    await page.goto(`${base}/signin`);
    await page.fill("#token", alice);
    await page.click("form button[type=submit]");
    const res = await page.goto(`${base}/alice/secret`);
    assert(res.status() === 200, `signed in: ${res.status()}`);
    await page.screenshot({ path: join(shots, "private.png"), fullPage: true });
    await page.goto(`${base}/`);
    assert((await page.locator("article.card").count()) === 4, "the listing shows the private adapter");
    await page.goto(`${base}/signout`);
    await page.click("form button[type=submit]");
    const after = await page.goto(`${base}/alice/secret`);
    assert(after.status() === 404, `signed out: ${after.status()}`);
    await page.screenshot({ path: join(shots, "not-found.png"), fullPage: true });
  });

  await check("merge form: submit and watch the job finish", async () => {
    await page.goto(`${base}/signin?next=/alice/summarizer`);
    await page.fill("#token", alice);
    await page.click("form button[type=submit]");
    assert(page.url() === `${base}/alice/summarizer`, page.url());
    await page.check("input[name=inputs][value='alice/translator']");
    await page.selectOption("#method", "linear");
    await page.fill("#output", "browser-merged");
    await page.click("form.merge-form button[type=submit]");
    assert(/\/jobs\/[0-9a-f-]{36}$/.test(page.url()), `job page: ${page.url()}`);
    let state = "";
    for (let i = 0; i < 120; i++) {
      state = (await page.textContent("#job-state")).trim();
      if (!["queued", "running"].includes(state)) break;
      await page.waitForTimeout(500);
      await page.reload();
    }
    await page.screenshot({ path: join(shots, "job.png"), fullPage: true });
    assert(state === "succeeded", `job ended ${state}`);
    await page.click("#job-result");
    assert(page.url() === `${base}/alice/browser-merged/versions/1`, page.url());
    const links = await page.locator("svg.dag a").count();
    assert(links === 3, `lineage graph nodes: ${links}`);
    await page.screenshot({ path: join(shots, "lineage.png"), fullPage: true });
    await page.goto(`${base}/jobs`);
    await page.screenshot({ path: join(shots, "jobs.png"), fullPage: true });
  });

  await check("page weight and no external requests", async () => {
    for (const path of ["/", "/alice/summarizer"]) {
      const res = await fetch(base + path);
      const html = Buffer.byteLength(await res.text());
      const css = Buffer.byteLength(await (await fetch(`${base}/static/style.css`)).text());
      assert(html + css <= 100 * 1024, `${path}: ${html} + ${css} bytes`);
      results.push(`     ${path}: HTML ${html} B + CSS ${css} B`);
    }
    assert(foreign.length === 0, `requests left the server: ${foreign}`);
  });

  await check("accessibility (axe-core): no serious or critical violations", async () => {
    const axe = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
    // axe is injected as a script, which the pages' CSP forbids: this context bypasses it.
    const ctx = await browser.newContext({ bypassCSP: true });
    const p = await ctx.newPage();
    await p.goto(`${base}/signin`);
    await p.fill("#token", alice);
    await p.click("form button[type=submit]");
    const pages = ["/", "/alice/summarizer", "/alice/summarizer/versions/1", "/alice/browser-merged",
      "/jobs", "/signin", "/nope/missing"];
    const bad = [];
    for (const path of pages) {
      await p.goto(base + path);
      await p.addScriptTag({ content: axe });
      const found = await p.evaluate(async () => (await window.axe.run()).violations
        .filter((v) => ["serious", "critical"].includes(v.impact))
        .map((v) => `${v.id} (${v.nodes.length})`));
      if (found.length) bad.push(`${path}: ${found.join(", ")}`);
    }
    await ctx.close();
    assert(bad.length === 0, bad.join("; "));
  });
} finally {
  await browser?.close();
  server.kill("SIGTERM");
  rmSync(data, { recursive: true, force: true });
}

console.log(results.join("\n"));
console.log(`screenshots in ${shots}`);
if (failures) {
  console.error(`${failures} browser check(s) failed`);
  process.exit(1);
}
