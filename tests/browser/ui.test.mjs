// Drives the Damascus web UI in headless Chromium: a new item appears without reload,
// its drawer shows its phase change live, and a question is answered in the form.
// Run by crates/damascus/tests/cli/browser.rs, which starts `damascus run` and sets:
//   BASE_URL, TOKEN, ARTIFACTS (a directory for screenshots), CHROMIUM (its path).
import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";

const { BASE_URL, TOKEN, ARTIFACTS, CHROMIUM } = process.env;
mkdirSync(ARTIFACTS, { recursive: true });

async function api(path, body) {
  const response = await fetch(`${BASE_URL}${path}`, {
    method: body ? "POST" : "GET",
    headers: { Authorization: `Bearer ${TOKEN}`, "Content-Type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  assert.ok(response.ok, `${path}: HTTP ${response.status}`);
  return response.json();
}

const GREETING = "Greet the reader.\n\n## Acceptance criteria\n- hello.txt holds hello\n\n## Test command\n`grep -qx hello hello.txt`\n";
const FAREWELL = "Say goodbye.\n\n## Acceptance criteria\n- farewell.txt holds goodbye\n\n## Test command\n`grep -qx goodbye farewell.txt`\n";

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  page.on("pageerror", (e) => { throw e; });
  await page.goto(`${BASE_URL}/#/items`);
  await page.getByRole("textbox", { name: "Token" }).fill(TOKEN);
  await page.getByRole("button", { name: "Save" }).click();
  await page.getByText("No items yet").waitFor();
  // The token is kept: a reload needs no second entry.
  await page.reload();
  await page.getByText("No items yet").waitFor();

  // A new item appears without a reload (the live event stream), within seconds.
  const hello = await api("/v1/items", { project: "web", title: "Say hello", body: GREETING });
  const row = page.locator(`tr[data-item="${hello.id}"]`);
  await row.waitFor({ timeout: 5000 });
  await page.screenshot({ path: `${ARTIFACTS}/1-item-appeared.png`, fullPage: true });

  // The drawer follows the item through its phases to merged.
  await row.click();
  await page.locator("#drawer-phase .pill").waitFor();
  await page.locator('#drawer-phase [data-phase="merged"]').waitFor({ timeout: 60000 });
  await page.locator(`tr[data-item="${hello.id}"] [data-phase="merged"]`).waitFor();
  assert.match(await page.locator("#drawer-body .timeline").innerText(), /review → merged/);
  await page.screenshot({ path: `${ARTIFACTS}/2-merged.png`, fullPage: true });

  // An item that cannot pass blocks with a question; answering it in the form resumes it.
  const farewell = await api("/v1/items", { project: "web", title: "Say goodbye", body: FAREWELL });
  await page.getByRole("button", { name: "Close" }).click();
  await page.locator(`tr[data-item="${farewell.id}"] [data-phase="blocked"]`).waitFor({ timeout: 60000 });
  await page.locator(`tr[data-item="${farewell.id}"]`).click();
  await page.getByText("answer with guidance to rebuild the change with it").waitFor({ timeout: 10000 });
  const answer = page.getByLabel("Your answer");
  await answer.fill("Write farewell.txt with the single line goodbye.");
  await page.screenshot({ path: `${ARTIFACTS}/3-question.png`, fullPage: true });
  await page.getByRole("button", { name: "Answer" }).click();
  await page.getByText("Answer: Write farewell.txt with the single line goodbye.").waitFor({ timeout: 10000 });
  await page.locator("#drawer-body .timeline", { hasText: "blocked → build" }).waitFor({ timeout: 10000 });
  await page.screenshot({ path: `${ARTIFACTS}/4-answered.png`, fullPage: true });
  // The answer reached the agent, which followed it: the item merges.
  await page.locator(`tr[data-item="${farewell.id}"] [data-phase="merged"]`).waitFor({ timeout: 60000 });
  const item = await api(`/v1/items/${farewell.id}`);
  assert.equal(item.human_issues[0].status, "answered");
  assert.equal(item.item.phase, "merged");
  console.log("browser test passed");
} finally {
  await browser.close();
}
