// Open the example page in headless Chromium, wait for its ranking, save a screenshot.
// usage: node drive_web.mjs URL SCREENSHOT.png CHROMIUM  → the page's ranking JSON on stdout
import { chromium } from "playwright-core";

const [url, screenshot, executablePath] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath, headless: true, args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"] });
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 560 } });
  const errors = [];
  page.on("pageerror", (error) => errors.push(String(error)));
  page.on("console", (message) => { if (message.type() === "error") errors.push(message.text()); });
  await page.goto(url);
  try {
    await page.waitForFunction(() => document.title === "ranked", null, { timeout: 120000 });
  } catch (error) {
    throw new Error(`the page did not rank: ${errors.join(" | ") || error.message}`);
  }
  await page.screenshot({ path: screenshot });
  process.stdout.write(await page.textContent("#ranking"));
} finally {
  await browser.close();
}
