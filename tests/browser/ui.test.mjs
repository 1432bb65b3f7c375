// Drives the Damascus console in headless Chromium against `damascus run` on a real
// database, real git repositories and scripted agents. Run by
// crates/damascus/tests/cli/browser.rs, which sets:
//   BASE_URL, TOKEN, ARTIFACTS (screenshots), CHROMIUM (its path), DATA_DIR (the run's
//   data dir: item logs are under logs/<item>/), FAIL_FLAG (while it exists the ops
//   agent fails), GO_FLAG (the ops agent prints MARKER once it exists), MARKER.
// Projects: web (demo agent), gated (specs need approval), ops (the ops agent).
//
// What it proves, each on the real run: a new item appears without a reload; the
// new-story form shows the API's 422 as it is and creates a story; the log tail shows the
// agent's marker within a second of its write; the dashboard equals GET /v1/stats number
// for number, before and after, and follows the event stream; an answer typed on the
// dashboard resumes an item; approve, cancel (and going back) and retry in the drawer
// change the item's phase, and a refused cancel shows the API's message; filters, search,
// sort and pages come from the server; pause and resume. Screenshots: dashboard.png,
// items.png, drawer.png (the whole drawer), drawer-log.png, drawer-blocked.png,
// projects.png, and failure.png when a step fails.
import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const { BASE_URL, TOKEN, ARTIFACTS, CHROMIUM, DATA_DIR, FAIL_FLAG, GO_FLAG, MARKER } = process.env;
mkdirSync(ARTIFACTS, { recursive: true });
rmSync(join(ARTIFACTS, "failure.png"), { force: true });

async function call(path, body) {
  const response = await fetch(`${BASE_URL}${path}`, {
    method: body ? "POST" : "GET",
    headers: { Authorization: `Bearer ${TOKEN}`, "Content-Type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: response.status, body: await response.json() };
}
async function api(path, body) {
  const { status, body: json } = await call(path, body);
  assert.ok(status >= 200 && status < 300, `${path}: HTTP ${status} ${JSON.stringify(json)}`);
  return json;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(what, check, timeout = 60000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}
const item = (id) => api(`/v1/items/${id}`);
const story = (what, file, word) => `${what}\n\n## Acceptance criteria\n- ${file} holds ${word}\n\n## Test command\n\`grep -qx ${word} ${file}\`\n`;
const GREETING = story("Greet the reader.", "hello.txt", "hello");
const FAREWELL = story("Say goodbye.", "farewell.txt", "goodbye");

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const errors = [];
const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
try {
  page.on("pageerror", (e) => errors.push(e));
  const shot = (name) => page.screenshot({ path: `${ARTIFACTS}/${name}`, fullPage: true });
  const drawerPhase = (phase) => page.locator(`#drawer-phase [data-phase="${phase}"]`);
  const openDrawer = async (id) => {
    await page.goto(`${BASE_URL}/#/items/${id}`);
    await page.locator("#drawer-title", { hasText: `#${id}` }).waitFor();
    await page.locator("#drawer-phase .pill").waitFor();
  };
  // Runs a drawer action through its confirmation dialog; returns the dialog's text.
  const act = async (label, confirm) => {
    await page.locator("#drawer").getByRole("button", { name: label, exact: true }).click();
    const dialog = page.getByRole("dialog");
    await dialog.waitFor();
    const text = await dialog.innerText();
    await dialog.getByRole("button", { name: confirm, exact: true }).click();
    await dialog.waitFor({ state: "hidden" });
    return text;
  };

  // The token: entered once, kept across reloads.
  await page.goto(`${BASE_URL}/#/items`);
  await page.getByRole("textbox", { name: "Token" }).fill(TOKEN);
  await page.getByRole("button", { name: "Save" }).click();
  await page.getByText("No items yet").waitFor();
  await page.reload();
  await page.getByText("No items yet").waitFor();

  // A new item appears without a reload (the event stream); its drawer follows it to merged.
  const hello = await api("/v1/items", { project: "web", title: "Say hello", body: GREETING });
  const row = page.locator(`tr[data-item="${hello.id}"]`);
  await row.waitFor({ timeout: 5000 });
  await row.click();
  await page.locator("#drawer-phase .pill").waitFor();
  await drawerPhase("merged").waitFor({ timeout: 60000 });
  await page.locator(`tr[data-item="${hello.id}"] [data-phase="merged"]`).waitFor();
  assert.match(await page.locator("#drawer .timeline").textContent(), /review → merged/);
  await page.getByRole("link", { name: /Pull request/ }).waitFor();
  await page.getByRole("button", { name: "Close" }).click();

  // The new-story form: the API's 422 shown verbatim, then a story created.
  await page.getByRole("button", { name: "New story" }).click();
  const form = page.locator("#new-story-form");
  await form.locator("#ns-project").selectOption("web");
  await form.locator("#ns-body").fill(FAREWELL);
  await form.locator("#ns-depends").fill("999999");
  await form.getByRole("button", { name: "Create story" }).click();
  const refusal = await call("/v1/items", { project: "web", title: "", body: FAREWELL, depends_on: [999999] });
  assert.equal(refusal.status, 422);
  await form.getByRole("alert").filter({ hasText: refusal.body.error.message }).waitFor();
  assert.equal((await form.getByRole("alert").innerText()).trim(), refusal.body.error.message);
  await form.locator("#ns-title").fill("Say goodbye");
  await form.locator("#ns-depends").fill("");
  await form.getByRole("button", { name: "Create story" }).click();
  await form.getByText(/Created #\d+ Say goodbye/).waitFor();
  const farewellId = Number((await form.getByRole("status").innerText()).match(/#(\d+)/)[1]);

  // The live log: the marker the agent prints shows in the drawer within a second.
  const tail = await api("/v1/items", { project: "ops", title: "Tail the log", body: GREETING });
  await until("the ops agent to wait for its go flag", async () => existsSync(join(DATA_DIR, "logs", String(tail.id)))
    && readdirSync(join(DATA_DIR, "logs", String(tail.id))).some((f) => readFileSync(join(DATA_DIR, "logs", String(tail.id), f), "utf8").includes("waiting for the go flag")));
  await openDrawer(tail.id);
  await page.locator("#log-tail", { hasText: "waiting for the go flag" }).waitFor({ timeout: 10000 });
  const shown = page.locator("#log-tail", { hasText: MARKER }).waitFor({ timeout: 15000 }).then(() => Date.now());
  writeFileSync(GO_FLAG, "");
  const written = await until("the marker in the log file", () => {
    const dir = join(DATA_DIR, "logs", String(tail.id));
    return readdirSync(dir).some((f) => readFileSync(join(dir, f), "utf8").includes(MARKER)) && Date.now();
  }, 15000);
  const seen = await shown;
  assert.ok(seen - written <= 1000, `the marker showed ${seen - written} ms after it was written`);
  // The agent's tool call shows in the transcript while the agent still runs.
  await page.locator('#log-tail .ev-tool_call[data-tool="Bash"]', { hasText: `${MARKER}-tool` }).waitFor({ timeout: 5000 });
  assert.equal((await item(tail.id)).item.phase, "build", "the tool call showed while the agent was running");
  await shot("drawer-log.png");
  await drawerPhase("merged").waitFor({ timeout: 60000 });

  // Items for the operator's actions: two wait for approval, one blocks (its agent fails).
  const approveMe = await api("/v1/items", { project: "gated", title: "Approve me", body: GREETING });
  const cancelMe = await api("/v1/items", { project: "gated", title: "Cancel me", body: GREETING });
  const failing = await api("/v1/items", { project: "ops", title: "Fail until fixed", body: GREETING });
  for (const id of [approveMe.id, cancelMe.id]) {
    await until(`#${id} to wait for approval`, async () => {
      const d = await item(id);
      return d.item.phase === "build" && d.item.spec && d.gates.some((g) => g.kind === "approval" && !g.open);
    });
  }
  await until("the failing item to block", async () => (await item(failing.id)).item.phase === "blocked");
  await until("the farewell to block", async () => (await item(farewellId)).item.phase === "blocked");
  await until("the queue to be idle", async () => {
    const s = await api("/v1/stats");
    return s.queue.running === 0 && s.queue.queued === 0;
  });

  // The dashboard shows GET /v1/stats exactly, and every count of it.
  const checkDashboard = async ({ reload = true } = {}) => {
    if (reload) await page.goto(`${BASE_URL}/#/`);
    await page.locator('[data-stat="queue.running"]').waitFor();
    await until("the dashboard to equal GET /v1/stats", async () => {
      const stats = await api("/v1/stats");
      const shown = await page.$$eval("[data-stat]", (els) => els.map((e) => [e.dataset.stat, e.textContent.trim()]));
      const map = new Map(shown);
      const leaves = [];
      const walk = (prefix, v) => {
        if (typeof v === "number") leaves.push([prefix, v]);
        else if (v && typeof v === "object" && !Array.isArray(v)) for (const [k, x] of Object.entries(v)) walk(prefix ? `${prefix}.${k}` : k, x);
      };
      for (const key of ["queue", "items_per_phase", "items_per_project", "open_human_issues", "throughput"]) walk(key, stats[key]);
      const wrong = leaves.filter(([path, v]) => map.get(path) !== String(v));
      for (const [path, text] of shown) {
        const v = path.split(".").reduce((o, k) => (o == null ? o : o[k]), stats);
        if (String(v) !== text) wrong.push([path, text]);
      }
      if (wrong.length) console.log("dashboard differs:", JSON.stringify(wrong));
      return wrong.length === 0;
    }, 15000);
  };
  await checkDashboard();
  assert.equal(await page.locator('.kpi.blocked [data-stat="items_per_phase.blocked"]').textContent(), "2");
  await page.locator("#questions [data-issue]").first().waitFor();
  await page.locator("#chart-transitions svg rect").first().waitFor();
  await page.locator("#workers [data-worker]").first().waitFor();
  await shot("dashboard.png");
  await page.getByRole("button", { name: "7d", exact: true }).click();
  await page.locator("#history-range", { hasText: "per 6h" }).waitFor();
  await page.getByRole("button", { name: "24h", exact: true }).click();
  await page.locator("#history-range", { hasText: "per 1h" }).waitFor();

  // Approve from the drawer: the build starts and the item merges.
  await openDrawer(approveMe.id);
  await page.getByText("waits for spec approval").waitFor();
  const approveText = await act("Approve spec", "Approve spec");
  assert.match(approveText, /will start its build/);
  await drawerPhase("merged").waitFor({ timeout: 60000 });
  assert.ok((await item(approveMe.id)).gates.some((g) => g.kind === "approval" && g.open));

  // Going back from the dialog does nothing; confirming cancels.
  await openDrawer(cancelMe.id);
  await page.locator("#drawer").getByRole("button", { name: "Cancel item" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Go back" }).click();
  await page.getByRole("dialog").waitFor({ state: "hidden" });
  assert.equal((await item(cancelMe.id)).item.phase, "build");
  const cancelText = await act("Cancel item", "Cancel item");
  assert.match(cancelText, /moves to cancelled/);
  await drawerPhase("cancelled").waitFor({ timeout: 10000 });
  assert.equal((await item(cancelMe.id)).item.phase, "cancelled");

  // Retry a blocked item once its cause is gone: it leaves blocked and merges.
  await openDrawer(failing.id);
  await drawerPhase("blocked").waitFor();
  await page.locator('[data-widget="verdict"] .value', { hasText: /fail|needs_human/ }).waitFor();
  await page.locator("#log-tail", { hasText: "the FAIL flag is set" }).waitFor({ timeout: 5000 });
  await shot("drawer-blocked.png");
  rmSync(FAIL_FLAG);
  // Only what a blocked item allows: retry and cancel, no approve.
  assert.equal(await page.locator("#drawer-top button[data-action]").evaluateAll((bs) => bs.map((b) => b.dataset.action).join(",")), "retry,cancel");
  // A refused action shows the API's own message: someone else retries the item while
  // this dialog is open, so confirming it here is refused.
  await page.locator("#drawer").getByRole("button", { name: "Retry", exact: true }).click();
  const retryDialog = page.getByRole("dialog");
  await retryDialog.waitFor();
  assert.match(await retryDialog.innerText(), /fresh attempt budget/);
  const elsewhere = await call(`/v1/items/${failing.id}/retry`, {});
  assert.equal(elsewhere.status, 200);
  await retryDialog.getByRole("button", { name: "Retry item", exact: true }).click();
  await page.locator("#drawer-error", { hasText: /Retry item refused: .*not blocked; only blocked items can be retried/ }).waitFor({ timeout: 5000 });
  await drawerPhase("blocked").waitFor({ state: "detached", timeout: 10000 });
  await drawerPhase("merged").waitFor({ timeout: 60000 });
  await page.locator('#drawer-costs tr[data-model="claude-sonnet-4-5"]').waitFor();
  await page.locator('[data-timeline-phase="review"]').first().waitFor();
  // The whole drawer in one picture: a viewport as tall as its content.
  const tall = await page.locator(".drawer-scroll").evaluate((e) => e.scrollHeight + 80);
  await page.setViewportSize({ width: 1440, height: Math.max(900, tall) });
  await shot("drawer.png");
  await page.setViewportSize({ width: 1440, height: 900 });

  // A merged item offers no action (the API would refuse each: 409).
  const refused = await call(`/v1/items/${hello.id}/cancel`, {});
  assert.equal(refused.status, 409);
  await openDrawer(hello.id);
  await page.locator("#drawer-top", { hasText: "merged: nothing left to do" }).waitFor();
  assert.equal(await page.locator("#drawer-top button[data-action]").count(), 0);
  assert.equal((await item(hello.id)).item.phase, "merged");

  // Answer the farewell's question on the dashboard: the agent follows the answer and
  // the item merges; its drawer shows the question answered.
  await page.goto(`${BASE_URL}/#/`);
  const question = page.locator("#questions .issue", { has: page.locator(`a[href="#/items/${farewellId}"]`) });
  await question.getByText("answer with guidance to rebuild the change with it").waitFor({ timeout: 10000 });
  await question.getByLabel("Your answer").fill("Write farewell.txt with the single line goodbye.");
  await question.getByRole("button", { name: "Answer" }).click();
  // The answer is sent only once confirmed, in a dialog that says where it goes.
  const confirmAnswer = page.getByRole("dialog");
  await confirmAnswer.waitFor();
  assert.match(await confirmAnswer.innerText(), new RegExp(`item #${farewellId}`));
  await confirmAnswer.getByRole("button", { name: "Send answer", exact: true }).click();
  await question.waitFor({ state: "detached", timeout: 10000 });
  await openDrawer(farewellId);
  await page.locator("#drawer").getByText("Answer: Write farewell.txt with the single line goodbye.").waitFor({ timeout: 10000 });
  await drawerPhase("merged").waitFor({ timeout: 60000 });
  assert.equal((await item(farewellId)).human_issues[0].status, "answered");
  await page.getByRole("button", { name: "Close" }).click();

  // Items: filters, sort and search run on the server.
  await page.goto(`${BASE_URL}/#/items`);
  await page.locator("#items tr[data-item]").first().waitFor();
  await page.locator("#f-project").selectOption("gated");
  await until("the project filter", async () => (await page.locator("#items tr[data-item]").count()) === 2, 5000);
  await page.locator("#f-phase").selectOption("cancelled");
  await page.locator(`#items tr[data-item="${cancelMe.id}"]`).waitFor();
  await until("the phase filter", async () => (await page.locator("#items tr[data-item]").count()) === 1, 5000);
  // The filters are in the address: a reload (or a shared link) shows the same view.
  assert.equal(new URL(page.url()).hash, "#/items?project=gated&phase=cancelled");
  await page.reload();
  await page.locator(`#items tr[data-item="${cancelMe.id}"]`).waitFor();
  assert.equal(await page.locator("#items tr[data-item]").count(), 1);
  assert.equal(await page.locator("#f-phase").inputValue(), "cancelled");
  await page.locator("#f-project").selectOption("");
  await page.locator("#f-phase").selectOption("");
  await page.locator("#f-q").fill("goodbye");
  await until("the search", async () => {
    const ids = await page.$$eval("#items tr[data-item]", (rows) => rows.map((r) => Number(r.dataset.item)));
    return ids.length === 1 && ids[0] === farewellId;
  }, 5000);
  await page.locator("#f-q").fill("");
  await page.locator("#f-sort").selectOption("id");
  await until("the sort", async () => {
    const ids = await page.$$eval("#items tr[data-item]", (rows) => rows.map((r) => Number(r.dataset.item)));
    return ids.length === 6 && ids.every((id, k) => k === 0 || ids[k - 1] < id);
  }, 5000);
  await page.locator("#items-total", { hasText: "6 items" }).waitFor();
  await page.locator("#f-sort").selectOption("-updated");
  await shot("items.png");

  // Projects: settings, today's spend against the cap, pause and resume.
  await page.goto(`${BASE_URL}/#/projects`);
  const ops = page.locator('[data-project="ops"]');
  await ops.waitFor();
  await ops.locator("[data-budget]", { hasText: "of $0.50 daily cap" }).waitFor();
  await ops.getByRole("button", { name: "Pause" }).click();
  await ops.locator('.pill[data-paused="true"]').waitFor();
  assert.equal((await api("/v1/projects")).projects.find((p) => p.name === "ops").paused, true);
  await shot("projects-paused.png");
  await ops.getByRole("button", { name: "Resume" }).click();
  await ops.locator('.pill[data-paused="false"]').waitFor();
  await shot("projects.png");

  // The dashboard again, after everything merged or was cancelled.
  await checkDashboard();
  await page.locator("#chart-lead svg rect").first().waitFor();
  await shot("dashboard-after.png");
  // It follows the event stream: a new story changes its numbers without a reload.
  await page.evaluate(() => { window.notReloaded = true; });
  await api("/v1/items", { project: "gated", title: "Wait for approval", body: GREETING });
  await page.locator('[data-stat="items_per_project.gated.build"]').waitFor({ timeout: 5000 });
  await checkDashboard({ reload: false });
  assert.equal(await page.evaluate(() => window.notReloaded), true, "the dashboard reloaded");

  // Pages come from the server: 30 more stories make two pages of 25.
  for (let k = 1; k <= 30; k++) await api("/v1/items", { project: "gated", title: `Queued story ${k}`, body: GREETING });
  const total = (await api("/v1/items?limit=1")).total;
  assert.equal(total, 37);
  await page.goto(`${BASE_URL}/#/items`);
  await page.locator("#f-limit").selectOption("25");
  await page.locator("#f-sort").selectOption("id");
  await page.locator("#page-info", { hasText: `1–25 of ${total}` }).waitFor();
  assert.equal(await page.locator("#items tr[data-item]").count(), 25);
  assert.ok(await page.locator("#prev").isDisabled());
  await page.getByRole("button", { name: "Next" }).click();
  await page.locator("#page-info", { hasText: `26–${total} of ${total}` }).waitFor();
  assert.equal(await page.locator("#items tr[data-item]").count(), total - 25);
  assert.equal(await page.locator("#items tr[data-item]").first().getAttribute("data-item"), String((await api("/v1/items?sort=id&limit=1&offset=25")).items[0].id));
  assert.ok(await page.locator("#next").isDisabled());
  await page.getByRole("button", { name: "Previous" }).click();
  await page.locator("#page-info", { hasText: `1–25 of ${total}` }).waitFor();

  // The page's own files are public, with their types; the data is not.
  for (const [path, type] of [["/", "text/html"], ["/ui/app.js", "text/javascript"], ["/ui/app.css", "text/css"]]) {
    const response = await fetch(`${BASE_URL}${path}`);
    assert.equal(response.status, 200, path);
    assert.match(response.headers.get("content-type"), new RegExp(`^${type}`), path);
    await response.text();
  }
  const anonymous = await fetch(`${BASE_URL}/v1/stats`);
  assert.equal(anonymous.status, 401);
  await anonymous.text();

  assert.deepEqual(errors.map(String), [], "the page threw");
  console.log("browser test passed");
} catch (e) {
  // What the page showed when the test failed, for whoever reads the failure.
  await page.screenshot({ path: `${ARTIFACTS}/failure.png`, fullPage: true }).catch(() => {});
  throw e;
} finally {
  await browser.close();
}
